"""The Redis key layout: the one module that formats chaincast's Redis keys (an interface, see the README).

Every reader and writer (the sink, the retrainer, the CLI, the live page, the bench,
the tests) asks this module for a key; none formats one itself (a test enforces it).
Prefix default ``cc:``:

- ``{prefix}pred:{SYMBOL}``            hash, the latest prediction of the default (return) forecaster
                                       (only ever moved forward in bar time);
- ``{prefix}preds:{SYMBOL}``           stream, its history, entry id ``{bar_ts}-{horizon}``, capped;
- ``{prefix}pred:{SYMBOL}:{target}:{h}``  hash, the latest prediction of each extra forecaster of
                                       ``CHAINCAST_FORECASTS`` (e.g. ``cc:pred:BTCUSDT:volatility:5``);
- ``{prefix}preds:{SYMBOL}:{target}:{h}`` stream, that forecaster's history;
- ``{prefix}model:{name}``             hash, the version a worker serves and its metrics
                                       (written by the workers once they accepted it);
- ``{prefix}score:{SYMBOL}``           hash, live MAE / skill / coverage (of the calibrated band) of the default
                                       forecaster's serving versions (fields ``{stat}@{version}`` per version);
- ``{prefix}score:{SYMBOL}:{target}:{h}`` hash, the same for each extra forecaster;
- ``{prefix}retrain:{model name}``     string, set by the score agent to ask the retrainer for a round now;
- ``{prefix}fee:{CHAIN_ID}``           hash, the latest fee forecasts of a chain: ``block``, ``block_hash``,
                                       ``timestamp``, ``base_fee_gwei`` and per forecast ``{target}.h{H}.{field}``
                                       (y_hat, q10, q90, reference, forecast_gwei, forecast_q10_gwei,
                                       forecast_q90_gwei, model_version); after a reorg ``retracted_block`` /
                                       ``retracted_hash`` name the last block withdrawn;
- ``{prefix}fees:{CHAIN_ID}``          stream, every fee forecast and retraction (auto ids: a re-forecast after
                                       a reorg is for a block number already in it), capped;
- ``{prefix}feescore:{CHAIN_ID}``      hash, live ``{target}.h{H}.{n,mae,mae_reference,skill,coverage_80}``;
- ``{prefix}txpreds:{CHAIN_ID}``       stream, one transaction-value forecast per transaction (auto ids), capped;
                                       a reorg deletes the entries of the orphaned block;
- ``{prefix}txpred:{CHAIN_ID}``        hash, the latest transaction-value forecast;
- ``{prefix}txalerts:{CHAIN_ID}``      stream, alerts (``retracted=false``) and their retractions (``true``);
- ``{prefix}txscore:{model name}``     hash, running MAE of the tx model and of the constant, skill, n, version.

>>> keys = RedisLayout("cc:")
>>> keys.latest("BTCUSDT"), keys.history("BTCUSDT"), keys.model("forecaster")
('cc:pred:BTCUSDT', 'cc:preds:BTCUSDT', 'cc:model:forecaster')
>>> keys.score("ETHUSDT"), keys.retrain_flag("forecaster"), keys.history_id(60000, 1)
('cc:score:ETHUSDT', 'cc:retrain:forecaster', '60000-1')
>>> keys.latest("BTCUSDT", "volatility", 5), keys.history("BTCUSDT", "volatility", 5)
('cc:pred:BTCUSDT:volatility:5', 'cc:preds:BTCUSDT:volatility:5')
>>> keys.score("BTCUSDT", "volatility", 5)
'cc:score:BTCUSDT:volatility:5'
>>> keys.fee_latest(1), keys.fee_history(1), keys.fee_score(1)
('cc:fee:1', 'cc:fees:1', 'cc:feescore:1')
>>> keys.tx_history(1), keys.tx_latest(1), keys.tx_alerts(1), keys.tx_score("tx_value")
('cc:txpreds:1', 'cc:txpred:1', 'cc:txalerts:1', 'cc:txscore:tx_value')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chaincast.stream.settings import Settings


@dataclass(frozen=True, slots=True)
class RedisLayout:
    prefix: str = "cc:"

    @classmethod
    def of(cls, settings: Settings) -> RedisLayout:
        return cls(settings.redis_prefix)

    def latest(self, symbol: str, target: str | None = None, horizon: int | None = None) -> str:
        """The default forecaster's hash without ``target``; an extra forecaster's with it."""
        return f"{self.prefix}pred:{symbol}" + self._extra(target, horizon)

    def history(self, symbol: str, target: str | None = None, horizon: int | None = None) -> str:
        return f"{self.prefix}preds:{symbol}" + self._extra(target, horizon)

    @staticmethod
    def _extra(target: str | None, horizon: int | None) -> str:
        return "" if target is None else f":{target}:{horizon or 1}"

    @staticmethod
    def history_id(bar_ts: int, horizon: int) -> str:
        """The history entry id: one entry per (bar, horizon), so a redelivered prediction is refused."""
        return f"{bar_ts}-{horizon}"

    def model(self, name: str) -> str:
        return f"{self.prefix}model:{name}"

    def score(self, symbol: str, target: str | None = None, horizon: int | None = None) -> str:
        """The default forecaster's live score hash without ``target``; an extra forecaster's with it."""
        return f"{self.prefix}score:{symbol}" + self._extra(target, horizon)

    def retrain_flag(self, model_name: str) -> str:
        return f"{self.prefix}retrain:{model_name}"

    def fee_latest(self, chain_id: int) -> str:
        return f"{self.prefix}fee:{chain_id}"

    def fee_history(self, chain_id: int) -> str:
        return f"{self.prefix}fees:{chain_id}"

    def fee_score(self, chain_id: int) -> str:
        return f"{self.prefix}feescore:{chain_id}"

    def tx_history(self, chain_id: int) -> str:
        return f"{self.prefix}txpreds:{chain_id}"

    def tx_latest(self, chain_id: int) -> str:
        return f"{self.prefix}txpred:{chain_id}"

    def tx_alerts(self, chain_id: int) -> str:
        return f"{self.prefix}txalerts:{chain_id}"

    def tx_score(self, model_name: str) -> str:
        return f"{self.prefix}txscore:{model_name}"

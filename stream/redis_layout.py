"""The Redis key layout: the one module that formats chaincast's Redis keys (an interface, see the README).

Every reader and writer (the sink, the retrainer, the CLI, the live page, the bench,
the tests) asks this module for a key; none formats one itself (a test enforces it).
Prefix default ``cc:``:

- ``{prefix}pred:{SYMBOL}``            hash, the latest prediction (only ever moved forward in bar time);
- ``{prefix}preds:{SYMBOL}``           stream, the history, entry id ``{bar_ts}-{horizon}``, capped;
- ``{prefix}model:{name}``             hash, the version a worker serves and its metrics
                                       (written by the workers once they accepted it);
- ``{prefix}score:{SYMBOL}``           hash, live MAE / skill / coverage of the serving versions;
- ``{prefix}retrain:{model name}``     string, set by the score agent to ask the retrainer for a round now.

>>> keys = RedisLayout("cc:")
>>> keys.latest("BTCUSDT"), keys.history("BTCUSDT"), keys.model("forecaster")
('cc:pred:BTCUSDT', 'cc:preds:BTCUSDT', 'cc:model:forecaster')
>>> keys.score("ETHUSDT"), keys.retrain_flag("forecaster"), keys.history_id(60000, 1)
('cc:score:ETHUSDT', 'cc:retrain:forecaster', '60000-1')
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

    def latest(self, symbol: str) -> str:
        return f"{self.prefix}pred:{symbol}"

    def history(self, symbol: str) -> str:
        return f"{self.prefix}preds:{symbol}"

    @staticmethod
    def history_id(bar_ts: int, horizon: int) -> str:
        """The history entry id: one entry per (bar, horizon), so a redelivered prediction is refused."""
        return f"{bar_ts}-{horizon}"

    def model(self, name: str) -> str:
        return f"{self.prefix}model:{name}"

    def score(self, symbol: str) -> str:
        return f"{self.prefix}score:{symbol}"

    def retrain_flag(self, model_name: str) -> str:
        return f"{self.prefix}retrain:{model_name}"

"""One market's state in a stream worker: the bar being built, the forecast window behind it
and the live calibration of each forecaster's band (``stream.calibration.LiveBand``).

All three live in one changelogged table entry keyed by the market (``exchange:SYMBOL``,
``MarketState.entry``), so the worker that closes a bar forecasts it in the same task (one
broker hop from trade to forecast) and a killed worker's markets recover elsewhere whole.
The state follows one contract: batches fold into the live state, a snapshot
(``entry``) is recorded once their outputs are acknowledged, a restarted or
rebalanced worker resumes from the last snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from collections.abc import Mapping

from pydantic import ValidationError

from chaincast.stream.bars import BarBuilder, Duplicate, Refused
from chaincast.stream.bounds import Bounds
from chaincast.stream.calibration import LiveBand
from chaincast.stream.records import Bar, Prediction, Trade, forecaster_key


@dataclass
class Folded:
    """What folding one message's trades did."""

    closed: list[Bar] = field(default_factory=list)
    refused: list[tuple[Trade, str]] = field(default_factory=list)  # (trade, dead-letter reason)
    duplicates: int = 0


@dataclass
class MarketState:
    bars: BarBuilder
    window: list[list[float]] = field(default_factory=list)  # the last closed bars, as stream.predict.bar_row
    bands: dict[str, LiveBand] = field(default_factory=dict)  # forecaster id (log_return:h1) -> its calibration

    def fold(self, trades: list[Trade], bounds: Bounds | None = None) -> Folded:
        """Fold trades into the open bar; refused trades change nothing and are reported.

        >>> s = MarketState(BarBuilder("binance", "BTCUSDT"))
        >>> t = lambda i, ts, p, q=1.0: Trade(exchange="binance", symbol="BTCUSDT", trade_id=i, price=p, qty=q,
        ...                                    side="buy", ts_event=ts)
        >>> out = s.fold([t(1, 0, 10.0), t(1, 0, 10.0), t(2, 1, 1e300, 1e300), t(3, 61_000, 11.0)], Bounds(None, 100))
        >>> [b.close for b in out.closed], out.duplicates, [r for _, r in out.refused]
        ([10.0], 1, ['overflow: notional 1e+300 x 1e+300 is not finite'])
        """
        out = Folded()
        for trade in trades:
            try:
                out.closed += self.bars.add(trade, bounds)
            except Duplicate:
                out.duplicates += 1
            except Refused as exc:
                out.refused.append((trade, str(exc)))
            except ValidationError as exc:  # a bar the trade would close is not a valid Bar
                out.refused.append((trade, f"invalid: bar: {exc.errors()[0]['msg']}"))
        return out

    def calibrate(self, p: Prediction, closes: Mapping[int, float]) -> Prediction:
        """``p`` with its q10..q90 calibrated (``stream.calibration``); the raw band is kept pending.

        ``closes``: the market's closes up to ``p``'s bar (what its outcomes are realised from).
        Call in bar order per forecaster, as the bars closed.

        >>> s = MarketState(BarBuilder("binance", "BTCUSDT"))
        >>> p = lambda ts: Prediction(exchange="binance", symbol="BTCUSDT", bar_ts=ts, horizon=1, target="volatility",
        ...     y_hat=0.001, q10=0.0008, q50=0.001, q90=0.0012, price=100, model_name="m", model_version="v",
        ...     created_at=0, latency_ms=0)
        >>> closes = {0: 100.0, 60_000: 101.0}
        >>> s.calibrate(p(0), closes).q90, round(s.calibrate(p(60_000), closes).q90, 6)  # a miss widens it
        (0.0012, 0.001203)
        >>> list(s.bands), s.bands["volatility:h1"].scale > 1
        (['volatility:h1'], True)
        """
        key = forecaster_key(p.target, p.horizon)
        band = self.bands.get(key)
        if band is None:
            band = self.bands[key] = LiveBand(p.target, p.horizon)
        q10, q90 = band.calibrate(p.bar_ts, closes, p.q10, p.q50, p.q90)
        return p.model_copy(update={"q10": q10, "q90": q90})

    def entry(self) -> dict:
        """The one ``markets`` table entry of the market: bar state, window and bands together.

        One entry, written whole by every write behind batches that touched the market (a
        copy: later batches go on changing the live state while it waits), so a recovered
        market never has a bar state from one batch and a window from another. (Two entries,
        the window written only when a bar closed, cut the cost of a message by a third, but
        the Apache Kafka SIGKILL test then once found a market recovered with an empty
        window, 115 forecasts missing; the cause was not found in time, so the split was
        withdrawn: deploy/BENCHMARKS.md. The changelog-partition defect fixed since, ``stream.app``,
        fits that symptom; the split was not measured again.)
        """
        return {"bars": self.bars.to_dict(), "window": list(self.window),  # rows are replaced, never changed
                "bands": {k: b.to_dict() for k, b in self.bands.items()}}

    @classmethod
    def load(cls, entry: dict | None, exchange: str, symbol: str) -> "MarketState":
        """A market's state from its ``markets`` table entry (``entry``), or a fresh one.

        >>> s = MarketState(BarBuilder("binance", "BTCUSDT"), [[0.0] * 8])
        >>> back = MarketState.load(s.entry(), "binance", "BTCUSDT")
        >>> back.window == s.window, back.bars.symbol
        (True, 'BTCUSDT')
        """
        if not entry:
            return cls(BarBuilder(exchange, symbol))
        bands = {k: LiveBand.from_dict(b) for k, b in (entry.get("bands") or {}).items()}
        return cls(BarBuilder.from_dict(entry["bars"]), [list(r) for r in entry.get("window") or []], bands)

"""One market's state in a stream worker: the bar being built, the forecast window behind it
and the live calibration of each forecaster's band (``stream.calibration.LiveBand``).

They live in two changelogged table entries keyed by the market (``exchange:SYMBOL``): the bar
state in ``markets`` (``MarketState.bar_entry``, written for every change) and the window with
the bands in ``windows`` (``MarketState.window_entry``, written only when a bar closed). So the
worker that closes a bar forecasts it in the same task (one broker hop from trade to forecast),
a killed worker's markets recover elsewhere whole, and a trade costs the changelog a few hundred
bytes, not the window's kilobytes. The state follows one contract: batches fold into the live
state, snapshots are recorded (window first) once their outputs are acknowledged, a restarted
or rebalanced worker resumes from the last snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from collections.abc import Mapping

from pydantic import ValidationError

from chaincast.stream.bars import BarBuilder, Duplicate, Refused
from chaincast.stream.bounds import Bounds
from chaincast.stream.calibration import LiveBand
from chaincast.stream.predict import push
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
    window_changed: bool = field(default=False, compare=False)  # since the last ``window_entry`` was taken

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
        self.window_changed = True
        band = self.bands.get(key)
        if band is None:
            band = self.bands[key] = LiveBand(p.target, p.horizon)
        q10, q90 = band.calibrate(p.bar_ts, closes, p.q10, p.q50, p.q90)
        return p.model_copy(update={"q10": q10, "q90": q90})

    def push(self, bar: Bar, size: int) -> bool:
        """Append a closed bar to the window (``stream.predict.push``: kept at ``size``, a redelivered
        bar replaces the last row); False for a bar older than the last row."""
        pushed = push(self.window, bar, size)
        self.window_changed |= pushed
        return pushed

    def bar_entry(self) -> dict:
        """The market's ``markets`` table entry: the bar being built (a few hundred bytes, changed by
        every trade), written by every write behind batches that touched the market."""
        return {"bars": self.bars.to_dict()}

    def window_entry(self) -> dict:
        """The market's ``windows`` table entry: the window and the bands (kilobytes, changed only
        when a bar closes and is forecast), written only by a write behind batches that changed them.

        A write records the window entries and waits for them on the broker before it records the
        bar entries (``stream.agents.markets.Markets.write``), so a recovered market's window is
        never older than its bar state: a worker killed between the two redoes the batches from
        the older bar state, and a bar it closes again is either the window's last row (replaced
        by the same row, forecast again the same) or older (refused by ``push``: it was forecast).
        The reverse order would lose a bar from the window for good. Entries are copies: later
        batches go on changing the live state while a write waits.
        """
        return {"window": list(self.window),  # rows are replaced, never changed
                "bands": {k: b.to_dict() for k, b in self.bands.items()}}

    def entry(self) -> dict:
        """Both entries in one dict (what ``load`` also reads: the one entry of earlier versions)."""
        return {**self.bar_entry(), **self.window_entry()}

    @classmethod
    def load(cls, entry: dict | None, exchange: str, symbol: str, window: dict | None = None) -> "MarketState":
        """A market's state from its ``markets`` table entry (``entry``) and ``windows`` table entry
        (``window``; None: read from ``entry``, as earlier versions wrote both there), or a fresh one.

        >>> s = MarketState(BarBuilder("binance", "BTCUSDT"), [[0.0] * 8])
        >>> back = MarketState.load(s.bar_entry(), "binance", "BTCUSDT", s.window_entry())
        >>> back.window == s.window, back.bars.symbol, back.window_changed
        (True, 'BTCUSDT', False)
        >>> earlier = MarketState.load(s.entry(), "binance", "BTCUSDT")  # one entry, as written before the split
        >>> earlier == back, earlier.window_changed  # the same state; its window is written at the next write
        (True, True)
        """
        if not entry:
            return cls(BarBuilder(exchange, symbol))
        earlier = window is None and "window" in entry  # written before the split: the next write moves it
        window = entry if window is None else window
        bands = {k: LiveBand.from_dict(b) for k, b in (window.get("bands") or {}).items()}
        return cls(BarBuilder.from_dict(entry["bars"]), [list(r) for r in window.get("window") or []], bands,
                   window_changed=earlier)

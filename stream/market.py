"""One market's state in a stream worker: the bar being built and the forecast window behind it.

Both are keyed by the market (``exchange:SYMBOL``) in two changelogged tables of the
same partitioning, so the worker that closes a bar forecasts it in the same task (one
broker hop from trade to forecast) and a killed worker's markets recover elsewhere whole.
They are two entries because they change at different rates: the bar state with every
message (a small record), the window only when a bar closes (tens of rows). One entry
wrote the whole window to the changelog for every message, which made a worker's cost
per message grow with the window (profile in deploy/BENCHMARKS.md).
The state follows one contract: fold a batch into a copy, snapshot it once the
batch's outputs are acknowledged, resume from the snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError

from chaincast.stream.bars import BarBuilder, Duplicate, Refused
from chaincast.stream.bounds import Bounds
from chaincast.stream.records import Bar, Trade


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

    def bars_dict(self) -> dict:
        """The entry of the ``markets`` table: written for every batch that touched the market."""
        return {"bars": self.bars.to_dict()}

    def window_dict(self) -> dict:
        """The entry of the ``windows`` table: written only for a batch that closed a bar."""
        return {"window": self.window}

    @classmethod
    def load(cls, bars: dict | None, window: dict | None, exchange: str, symbol: str) -> "MarketState":
        """A market's state from its two stored entries, or a fresh one.

        A ``markets`` entry written before the split also holds the window: it is used
        until the ``windows`` table has one.

        >>> s = MarketState(BarBuilder("binance", "BTCUSDT"), [[0.0] * 8])
        >>> back = MarketState.load(s.bars_dict(), s.window_dict(), "binance", "BTCUSDT")
        >>> back.window == s.window, back.bars.symbol
        (True, 'BTCUSDT')
        >>> MarketState.load({**s.bars_dict(), "window": [[1.0] * 8]}, None, "binance", "BTCUSDT").window[0][0]
        1.0
        """
        if not bars:
            return cls(BarBuilder(exchange, symbol))
        rows = (window or {}).get("window") or bars.get("window") or []
        return cls(BarBuilder.from_dict(bars["bars"]), [list(r) for r in rows])

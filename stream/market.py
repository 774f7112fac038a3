"""One market's state in a stream worker: the bar being built and the forecast window behind it.

Both live in one changelogged table entry keyed by the market (``exchange:SYMBOL``),
so the worker that closes a bar forecasts it in the same task (one broker hop
from trade to forecast) and a killed worker's markets recover elsewhere whole.
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

    def to_dict(self) -> dict:
        return {"bars": self.bars.to_dict(), "window": self.window}

    @classmethod
    def from_dict(cls, d: dict) -> "MarketState":
        return cls(BarBuilder.from_dict(d["bars"]), d.get("window") or [])

    @classmethod
    def load(cls, stored: dict | None, exchange: str, symbol: str) -> "MarketState":
        """The stored state of a market, or a fresh one."""
        return cls.from_dict(stored) if stored else cls(BarBuilder(exchange, symbol))

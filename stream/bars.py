"""Trades to 1-minute bars on event time: a small state object per market.

Policy (deliberate, documented in the README):
- trade ids are monotonic per symbol at the venue and the topic is keyed by
  market, so a trade whose id is at or below the highest id seen is a
  ``Duplicate`` (redelivery, a reconnect's overlap): counted, not dead-lettered;
- ``stream.bounds``: a trade dated too far ahead or overflowing a sum is
  refused; an id jump beyond the bound is a venue reset (the position re-based);
- a bar closes when the first trade of a later minute arrives (event time, not
  the wall clock); minutes without trades produce no bar (gaps stay gaps);
- a trade of a minute before the open bar (time went backwards under a new id)
  is refused as ``late``;
- at-least-once: a worker may crash after its table changelog recorded a
  trade but before the bar that trade closed was sent. When that trade comes
  again it re-emits the last closed bar (consumers of bars are idempotent on
  the bar time) instead of being refused.
Refused trades go to the dead-letter topic; they never change a bar.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from chaincast.models.timeunits import MINUTE_MS
from chaincast.stream.bounds import Bounds, OutOfBounds, finite_sum
from chaincast.stream.records import Bar, Trade, TradeBatch, market_key

SOURCE = "stream.markets"


class Refused(ValueError):
    """A trade that must not change any bar; the message is the dead-letter reason."""


class Duplicate(Refused):
    """A trade already folded in (a redelivery after a crash, a reconnect's overlap): counted, not
    dead-lettered one by one."""


@dataclass
class OpenBar:
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trades: int
    buy_volume: float
    notional: float
    first_trade_id: int
    last_trade_id: int

    @classmethod
    def first(cls, ts: int, t: Trade) -> "OpenBar":
        return cls(ts, t.price, t.price, t.price, t.price, t.qty, 1,
                   t.qty if t.side == "buy" else 0.0, t.price * t.qty, t.trade_id, t.trade_id)

    def add(self, t: Trade) -> None:
        # Sums first: a trade that would overflow one is refused before anything changes.
        volume = finite_sum(self.volume, t.qty, "volume")
        notional = finite_sum(self.notional, t.price * t.qty, "notional")
        self.high = max(self.high, t.price)
        self.low = min(self.low, t.price)
        self.close = t.price
        self.volume, self.notional = volume, notional
        self.trades += 1
        if t.side == "buy":
            self.buy_volume += t.qty
        self.last_trade_id = t.trade_id

    def to_bar(self, exchange: str, symbol: str) -> Bar:
        return Bar(exchange=exchange, symbol=symbol, ts=self.ts, open=self.open, high=self.high, low=self.low,
                   close=self.close, volume=self.volume, trades=self.trades, buy_volume=self.buy_volume,
                   vwap=self.notional / self.volume, first_trade_id=self.first_trade_id,
                   last_trade_id=self.last_trade_id)


@dataclass
class BarBuilder:
    """Per-market bar state; ``to_dict``/``from_dict`` round-trip it through a Faust table.

    >>> b = BarBuilder("binance", "BTCUSDT")
    >>> t = lambda i, ts, p: Trade(exchange="binance", symbol="BTCUSDT", trade_id=i, price=p, qty=1.0,
    ...                            side="buy", ts_event=ts)
    >>> b.add(t(1, 0, 10.0)), b.add(t(2, 30_000, 12.0))
    ([], [])
    >>> [(bar.open, bar.high, bar.close, bar.volume) for bar in b.add(t(3, 61_000, 11.0))]
    [(10.0, 12.0, 12.0, 2.0)]
    >>> [bar.ts for bar in b.add(t(3, 61_000, 11.0))]  # redelivered closer: the bar again
    [0]
    >>> b.add(t(2, 62_000, 11.0))
    Traceback (most recent call last):
    ...
    chaincast.stream.bars.Duplicate: duplicate: trade id 2 <= last seen 3
    """

    exchange: str
    symbol: str
    last_trade_id: int = -1
    bar: OpenBar | None = None
    last_closed: OpenBar | None = None
    closer_id: int = -1  # the trade that closed ``last_closed``

    def add(self, t: Trade, bounds: Bounds | None = None) -> list[Bar]:
        """Fold one trade in; return the bars it closed (zero or one).

        With ``bounds``: a trade outside them is refused, and an id jump beyond
        ``bounds.max_id_jump`` (either way) is a venue reset: the id position is
        re-based and the trade folds in as the next one.
        """
        reset = False
        if bounds is not None:
            try:
                bounds.check_trade(t.ts_event, t.price, t.qty)
            except OutOfBounds as exc:
                raise Refused(str(exc)) from None
            reset = bounds.is_reset(self.last_trade_id, t.trade_id)
        if t.trade_id <= self.last_trade_id and not reset:
            if t.trade_id == self.closer_id and self.last_closed is not None:
                return [self.last_closed.to_bar(self.exchange, self.symbol)]
            raise Duplicate(f"duplicate: trade id {t.trade_id} <= last seen {self.last_trade_id}")
        minute = t.ts_event - t.ts_event % MINUTE_MS
        closed: list[Bar] = []
        if self.bar is None:
            self.bar = OpenBar.first(minute, t)
        elif minute == self.bar.ts:
            try:
                self.bar.add(t)
            except OutOfBounds as exc:
                raise Refused(str(exc)) from None
        elif minute > self.bar.ts:
            closed.append(self.bar.to_bar(self.exchange, self.symbol))
            self.last_closed, self.closer_id = self.bar, t.trade_id
            self.bar = OpenBar.first(minute, t)
        else:
            raise Refused(f"late: trade at {t.ts_event} is before the open bar {self.bar.ts}")
        if reset:  # said only now: a refused trade changes nothing, not even the id position
            assert bounds is not None
            bounds.reset(SOURCE, self.symbol, self.last_trade_id, t.trade_id)
            if not closed:
                self.closer_id = -1
        self.last_trade_id = t.trade_id
        return closed

    def to_dict(self) -> dict:
        # By hand: dataclasses.asdict's recursive copy was most of a market's table entry's cost.
        return {**vars(self), "bar": dict(vars(self.bar)) if self.bar else None,
                "last_closed": dict(vars(self.last_closed)) if self.last_closed else None}

    @classmethod
    def from_dict(cls, d: dict) -> "BarBuilder":
        bar, last = d.get("bar"), d.get("last_closed")
        return cls(d["exchange"], d["symbol"], d["last_trade_id"], OpenBar(**bar) if bar else None,
                   OpenBar(**last) if last else None, d.get("closer_id", -1))


def parse_trades(raw: bytes | None, key: bytes | None, symbols: frozenset[str], max_bytes: int) -> list[Trade]:
    """Decode one ``ticks.trades`` message (a Trade or a TradeBatch); raise Refused with the reason.

    >>> parse_trades(b"{", b"binance:BTCUSDT", frozenset({"BTCUSDT"}), 1000)
    Traceback (most recent call last):
    ...
    chaincast.stream.bars.Refused: invalid: Invalid JSON: EOF while parsing an object at line 1 column 1
    """
    if raw is None:
        raise Refused("invalid: empty message")
    if len(raw) > max_bytes:
        raise Refused(f"oversized: {len(raw)} bytes > {max_bytes}")
    try:
        if b'"trades"' in raw:
            batch = TradeBatch.loads(raw)
            exchange, symbol, trades = batch.exchange, batch.symbol, batch.trades
        else:
            trade = Trade.loads(raw)
            exchange, symbol, trades = trade.exchange, trade.symbol, [trade]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Refused(f"invalid: {where + ': ' if where else ''}{first['msg']}") from None
    if symbol not in symbols:
        raise Refused(f"unknown_symbol: {symbol[:64]!r}")  # cut: a reason is a log line, not a payload
    expected = market_key(exchange, symbol)
    if key is None or key.decode("utf-8", "replace") != expected:
        raise Refused(f"bad_key: {key[:128] if key else key!r} for {expected[:128]}")
    return trades

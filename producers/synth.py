"""One 1-minute OHLCV bar replayed as four trades, the same way everywhere.

The local exchange and the direct CSV replay both call ``bar_trades``, so a bar
replayed over the websocket and a bar replayed straight into Kafka are the same
trades, id for id.

Four trades per bar: open, then the two extremes in the order that fits the
candle (low first when the bar closed up, high first when it closed down), then
close. Event times sit strictly inside the minute, at +0 s, +15 s, +30 s and
+59.999 s. The quantity is a quarter of the bar volume each, the last trade
taking the remainder, so the four add up to the volume (up to float rounding).

Trade ids are ``minute * 4 + i`` (``minute = ts // 60_000``): monotonic,
deterministic (a restarted replay sends identical ids) and contiguous across
consecutive bars, so the producer's gap detection (``id == last + 1``) works on
a replay exactly as on the exchange; a missing minute in the history shows up
as an honest gap of four ids.

A zero-volume bar still yields four trades (the bar has prices) with the tiny
quantity ``ZERO_VOLUME_QTY``, because a Trade's quantity must be positive.

The taker side is "buy" when the price is at or above the previous trade of the
same bar (the open trade is a "buy"): looking only inside the bar keeps a bar's
trades independent of where a replay starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from chaincast.models.history import CLOSE, HIGH, LOW, OPEN, TS, VOLUME
from chaincast.models.timeunits import MINUTE_MS
from chaincast.stream.records import Trade

TRADES_PER_BAR = 4
OFFSETS_MS = (0, 15_000, 30_000, MINUTE_MS - 1)
ZERO_VOLUME_QTY = 1e-12


def first_trade_id(bar_ts_ms: int) -> int:
    """The id of a bar's open trade; the others follow it by one.

    >>> first_trade_id(60_000), first_trade_id(120_000)
    (4, 8)
    """
    return (bar_ts_ms // MINUTE_MS) * TRADES_PER_BAR


def bar_ts_of(trade_id: int) -> int:
    """The open time of the bar a synthetic trade id belongs to.

    >>> bar_ts_of(first_trade_id(1_662_336_000_000) + 3)
    1662336000000
    """
    return (trade_id // TRADES_PER_BAR) * MINUTE_MS


def bar_trades(exchange: str, symbol: str, bar_row: Sequence[float]) -> list[Trade]:
    """The four trades of one bar row (``models.history.BAR_COLUMNS`` layout).

    >>> [(t.trade_id % 4, t.price, t.side) for t in bar_trades("binance", "BTCUSDT", [60_000, 10, 12, 9, 11, 8])]
    [(0, 10.0, 'buy'), (1, 9.0, 'sell'), (2, 12.0, 'buy'), (3, 11.0, 'sell')]
    >>> sum(t.qty for t in bar_trades("binance", "BTCUSDT", [60_000, 10, 12, 9, 11, 8]))
    8.0
    """
    ts = int(bar_row[TS])
    o, h, lo, c = (float(bar_row[i]) for i in (OPEN, HIGH, LOW, CLOSE))
    prices = (o, lo, h, c) if c >= o else (o, h, lo, c)
    volume = float(bar_row[VOLUME])
    if math.isfinite(volume) and volume > 0:
        quarter = volume / TRADES_PER_BAR
        qtys = (quarter, quarter, quarter, volume - 3 * quarter)
    else:
        qtys = (ZERO_VOLUME_QTY,) * TRADES_PER_BAR
    base = first_trade_id(ts)
    out: list[Trade] = []
    prev = prices[0]
    for i, (price, qty, offset) in enumerate(zip(prices, qtys, OFFSETS_MS)):
        out.append(Trade(exchange=exchange, symbol=symbol.upper(), trade_id=base + i, price=price, qty=qty,
                         side="buy" if price >= prev else "sell", ts_event=ts + offset))
        prev = price
    return out


def dense_trades(exchange: str, symbol: str, bar_row: Sequence[float], n: int) -> list[Trade]:
    """``n`` trades for one bar, as dense as a real minute (the exchange's own 1-minute export
    shows a median of 430 to 2,444 trades per minute for ETHUSDT and BTCUSDT): prices walk
    linearly through the same four anchors as ``bar_trades`` (open, the extremes, close), so the
    bar they build has the row's OHLC; quantities split the volume evenly; ids ``minute * n + i``.

    >>> ts = dense_trades("binance", "BTCUSDT", [60_000, 10, 12, 9, 11, 8], 10)
    >>> [round(t.price, 3) for t in ts][:4], ts[-1].price, max(t.price for t in ts), min(t.price for t in ts)
    ([10.0, 9.667, 9.333, 9.0], 11.0, 12.0, 9.0)
    >>> round(sum(t.qty for t in ts), 9), ts[0].trade_id, ts[-1].ts_event < 120_000
    (8.0, 10, True)
    """
    if n < TRADES_PER_BAR:
        raise ValueError(f"a bar needs at least {TRADES_PER_BAR} trades, not {n}")
    anchors = [t.price for t in bar_trades(exchange, symbol, bar_row)]
    ts = int(bar_row[TS])
    volume = float(bar_row[VOLUME])
    qty = volume / n if math.isfinite(volume) and volume > 0 else ZERO_VOLUME_QTY
    out: list[Trade] = []
    prev = anchors[0]
    for i in range(n):
        pos = 3 * i / (n - 1)  # 0..3 along the three legs between the anchors
        leg = min(int(pos), 2)
        price = anchors[leg] + (anchors[leg + 1] - anchors[leg]) * (pos - leg)
        out.append(Trade(exchange=exchange, symbol=symbol.upper(), trade_id=(ts // MINUTE_MS) * n + i, price=price,
                         qty=qty, side="buy" if price >= prev else "sell", ts_event=ts + i * (MINUTE_MS - 1) // (n - 1)))
        prev = price
    return out

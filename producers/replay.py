"""Replay real 1-minute history into ``ticks.trades`` as trades, keeping event time.

Each bar becomes its four synthetic trades (``producers.synth``), sent as one
TradeBatch keyed ``exchange:SYMBOL``. Markets are interleaved in event-time
order, and ``speed`` paces the replay against the wall clock (600 = ten hours
of market per minute; ``None`` = as fast as the broker takes it).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client import Counter

from chaincast.models.history import TS, load_many
from chaincast.models.timeunits import now_ms
from chaincast.producers.synth import bar_trades
from chaincast.stream.publish import Publisher
from chaincast.stream.records import TradeBatch, market_key
from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)

REPLAYED = Counter("chaincast_replay_trades_total", "Trades published by the history replay", ["symbol"])


@dataclass(frozen=True)
class Market:
    symbol: str
    bars: np.ndarray  # models.history layout


def load_markets(files: dict[str, list[Path]], limit: int | None = None) -> list[Market]:
    """One Market per symbol; ``limit`` keeps only the first ``limit`` bars of each."""
    return [Market(sym, load_many(paths)[:limit]) for sym, paths in files.items()]


def interleave(markets: list[Market]) -> Iterator[tuple[str, np.ndarray]]:
    """(symbol, bar row) across markets in event-time order.

    >>> a = Market("A", np.array([[0.0], [120_000.0]]))
    >>> b = Market("B", np.array([[60_000.0]]))
    >>> [(s, int(r[0])) for s, r in interleave([a, b])]
    [('A', 0), ('B', 60000), ('A', 120000)]
    """
    def keyed(i: int, m: Market) -> Iterator[tuple[float, int, str, np.ndarray]]:
        return ((float(row[TS]), i, m.symbol, row) for row in m.bars)

    for _ts, _i, symbol, row in heapq.merge(*(keyed(i, m) for i, m in enumerate(markets))):
        yield symbol, row


async def replay(settings: Settings, markets: list[Market], speed: float | None = None,
                 publisher: Publisher | None = None) -> int:
    """Publish every bar of every market as a TradeBatch; return the number of trades."""
    own = publisher is None
    pub = publisher or Publisher(settings)
    await pub.start()
    sent = 0
    wall0 = time.monotonic()
    ts0: float | None = None
    try:
        for symbol, row in interleave(markets):
            if speed is not None:
                ts0 = row[TS] if ts0 is None else ts0
                delay = (row[TS] - ts0) / 1000.0 / speed - (time.monotonic() - wall0)
                if delay > 0:
                    await asyncio.sleep(delay)
            trades = bar_trades(settings.exchange, symbol, row)
            now = now_ms()
            trades = [t.model_copy(update={"ts_ingest": now}) for t in trades]
            batch = TradeBatch(exchange=settings.exchange, symbol=symbol, trades=trades)
            await pub.send(settings.topic_trades, market_key(settings.exchange, symbol), batch)
            REPLAYED.labels(symbol).inc(len(trades))
            sent += len(trades)
        await pub.flush()
    finally:
        if own:
            await pub.stop()
    log.info("replayed %d trades", sent)
    return sent

"""Batching and acknowledgements of the exchange producer: trades -> TradeBatch records -> checkpoint.

Per symbol, trades wait in a buffer until ``exchange_batch_max`` of them are
there or ``exchange_linger_ms`` passed, then go out as one ``TradeBatch`` keyed
``venue:SYMBOL``. One lock orders all sends, so a symbol's batches reach the
broker in id order. The position of a symbol moves only when the broker
acknowledged a batch (aiokafka's ``flush()`` never raises, so the delivery
future is what counts), and the checkpoint saves positions now and then: a
restarted producer resumes at or before what Kafka holds. A refused batch stops
everything after it from moving the checkpoint; the run stops and a restart
resumes from the last acknowledged trade.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from aiokafka.errors import KafkaError
from prometheus_client import Counter, Histogram

from chaincast.producers.checkpoint import Checkpoint, Position
from chaincast.stream.bounds import Bounds
from chaincast.stream.publish import Publisher
from chaincast.stream.records import Trade, TradeBatch, market_key
from chaincast.stream.settings import Settings

if TYPE_CHECKING:
    from chaincast.producers.exchange import ProducerStats

log = logging.getLogger(__name__)

TRADES_OUT = Counter("chaincast_exchange_trades_total", "Trades acknowledged by Kafka", ["venue", "symbol"])
LAG = Histogram("chaincast_exchange_lag_seconds", "Exchange event time to Kafka ack", ["venue"],
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 3600, 86400))


class Batcher:
    """Buffers per symbol, sends in order, tracks acknowledged positions, saves the checkpoint."""

    def __init__(self, settings: Settings, publisher: Publisher, venue: str, checkpoint: Checkpoint,
                 acked: dict[str, Position], bounds: Bounds, stats: "ProducerStats") -> None:
        self.settings = settings
        self.publisher = publisher
        self.venue = venue
        self.checkpoint = checkpoint
        self.acked = acked  # symbol -> last trade the broker acknowledged
        self.bounds = bounds
        self.stats = stats
        self.failure: BaseException | None = None  # the first refused send; nothing moves after it
        self._buffers: dict[str, list[Trade]] = {}
        self._lock = asyncio.Lock()
        self._dirty = False
        self._lag = LAG.labels(venue)

    async def queue(self, trade: Trade) -> None:
        buf = self._buffers.setdefault(trade.symbol, [])
        buf.append(trade)
        if len(buf) >= self.settings.exchange_batch_max:
            await self.flush(trade.symbol)

    async def flush(self, symbol: str) -> None:
        # One lock for all sends: the ticker and the reader never reorder a symbol's batches.
        async with self._lock:
            trades = self._buffers.pop(symbol, None)
            if not trades:
                return
            batch = TradeBatch(exchange=self.venue, symbol=symbol, trades=trades)
            future = await self.publisher.producer.send(
                self.settings.topic_trades, batch.dumps(), key=market_key(self.venue, symbol).encode())
            future.add_done_callback(lambda f: self._acked(f, trades))

    async def flush_all(self) -> None:
        for symbol in list(self._buffers):
            await self.flush(symbol)

    def _acked(self, future: asyncio.Future, trades: list[Trade]) -> None:
        exc = KafkaError("send cancelled") if future.cancelled() else future.exception()
        if exc is not None or self.failure is not None:
            # The checkpoint never moves past an unacked trade, nor past a later batch acked
            # after an earlier one failed; stop and let a restart resume from it.
            if self.failure is None:
                self.failure = exc
                log.error("Kafka refused a batch of %s: %s", trades[0].symbol, exc)
            return
        symbol, last = trades[0].symbol, trades[-1]
        TRADES_OUT.labels(self.venue, symbol).inc(len(trades))
        self.stats.trades += len(trades)
        now = time.time()
        for t in trades:
            self._lag.observe(max(0.0, now - t.ts_event / 1000))
        prev = self.acked.get(symbol)
        # Batches of one symbol are acked in send order, so a lower id here is a venue reset.
        if prev is None or last.trade_id > prev.trade_id or self.bounds.is_reset(prev.trade_id, last.trade_id):
            self.acked[symbol] = Position(last.trade_id, last.ts_event)
            self._dirty = True

    async def tick(self) -> None:
        """Flush lingering batches and save the checkpoint now and then, until cancelled."""
        linger = max(self.settings.exchange_linger_ms, 1) / 1000
        last_save = time.monotonic()
        while True:
            await asyncio.sleep(linger)
            await self.flush_all()
            if self._dirty and time.monotonic() - last_save >= self.settings.exchange_checkpoint_interval_s:
                self._dirty = False
                last_save = time.monotonic()
                await asyncio.to_thread(self.checkpoint.save, dict(self.acked))

    async def close(self) -> None:
        """Send what is buffered (unless a send already failed) and save the acknowledged positions."""
        if self.failure is None:
            try:
                await self.flush_all()
                await self.publisher.flush()
            except KafkaError as exc:  # the positions below are the acknowledged ones either way
                log.error("final flush failed: %s", exc)
        self.checkpoint.save(dict(self.acked))

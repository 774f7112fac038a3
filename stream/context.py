"""The context the agents of one worker share: its app, topics, tables, model slots and sink.

Built by ``stream.app.create_app``; each agent module (``stream.agents.*``) and the
lag sampler get it through their ``register(streams)`` and import this module
downward, never the app module that imports them (faust's examples keep app,
topics and tables in a module the agents import for the same reason).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import faust

from chaincast.models.timeunits import now_ms
from chaincast.stream.chainfeatures import ChainMinutes
from chaincast.stream.metrics import DEADLETTERED, reason_kind
from chaincast.stream.model_slot import ModelSlots
from chaincast.stream.records import DeadLetter, ModelUpdate
from chaincast.stream.settings import Settings
from chaincast.stream.sink import RedisSink

RECORD_CHUNK = 32  # table entries written between yields to the loop (Streams.record)


@dataclass
class Streams:
    """Everything the agents share in one worker."""

    settings: Settings
    app: faust.App
    trades: faust.TopicT
    bars: faust.TopicT
    predictions: faust.TopicT
    deadletter: faust.TopicT
    markets: faust.Table  # market key (bytes, as on the trades topic) -> stream.market.MarketState.bar_entry()
    windows: faust.Table  # market key -> stream.market.MarketState.window_entry()
    slots: ModelSlots  # the market models, one per served forecaster
    sink: RedisSink
    chain: ChainMinutes
    chain_ready: asyncio.Event

    async def record(self, table: faust.Table, entries: dict[Any, Any]) -> None:
        """Write an agent's state for its batch (or for the batches a write behind covers,
        ``stream.batches``), and return once it is on the broker: only then may Faust acknowledge
        those messages (every agent that keeps state records it here).

        Every ``RECORD_CHUNK`` entries the loop is let go: each table write serializes its
        changelog record in place, so a write of hundreds of markets would otherwise hold every
        forecast behind it (measured in deploy/BENCHMARKS.md, symbols scan)."""
        for n, (key, value) in enumerate(entries.items(), 1):
            table[key] = value
            if n % RECORD_CHUNK == 0:
                await asyncio.sleep(0)
        if entries:
            await self.tables_durable()

    async def tables_durable(self) -> None:
        """Return once every table write made so far is acknowledged by the broker.

        A table write (``table[key] = value``) only queues its changelog record in Faust's producer
        buffer, and Faust's offset commit flushes that buffer with ``flush_atmost``, which gives up
        after 0.1 s without progress (faust 0.15.3, ``transport/producer.py``): the trade offsets
        can then be committed while the state that consumed them is still queued, and a SIGKILL
        loses the state but not the offsets (measured on the embedded broker, whose one-record
        produce requests drain the buffer slowly; see the kill test). So an agent that records
        state waits here before its batch is acknowledged.
        """
        producer = self.app.producer
        while producer.buffer.size:  # each flush returns after 0.1 s without progress: until empty
            await producer.buffer.flush()
        await producer.flush()  # aiokafka: every queued batch sent and acknowledged

    async def dead_letter(self, source: str, raw: bytes | str | None, reason: str, *,
                          topic: str | None = None, key: bytes | None = None) -> Awaitable[Any]:
        """Send a dead letter; returns the broker's ack to await before the batch's state is recorded."""
        DEADLETTERED.labels(source, reason_kind(reason)).inc()
        letter = DeadLetter(source=source, topic=topic, key=DeadLetter.text(key, 1024) or None, reason=reason,
                            raw=DeadLetter.text(raw), ts=now_ms())
        return await self.deadletter.send(key=source.encode(), value=letter.dumps())

    async def model_refused(self, update: ModelUpdate, reason: str) -> None:
        """Dead-letter a model update a slot refused (market, fee or tx model), once the broker has it."""
        await (await self.dead_letter("stream.models", update.dumps(), reason, topic=self.settings.topic_models,
                                      key=update.name.encode()))

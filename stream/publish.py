"""Producing chaincast records outside the Faust app (producers, the retrainer): keyed sends and dead letters.

A lazily started aiokafka producer configured by ``stream.kafka_options`` (acks=all;
idempotent on Kafka, one record per batch on the embedded broker).

aiokafka's ``flush()`` never raises: a batch the broker refused only fails its
delivery future. So the Publisher keeps every send's future until it resolves,
and ``flush()`` waits for all of them and raises the first failure: a caller
saves a position (a chain cursor, a checkpoint) only after ``flush()`` returned.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from chaincast.models.timeunits import now_ms
from chaincast.stream import kafka_options
from chaincast.stream.health import HEALTH, broker_reachable
from chaincast.stream.metrics import DEADLETTERED, reason_kind
from chaincast.stream.records import DeadLetter, Record
from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._pending: set[asyncio.Future] = set()  # sent, not yet acknowledged
        self._failure: BaseException | None = None  # the first send the broker refused
        self._watch: asyncio.Task | None = None  # the broker probe behind chaincast_broker_up / _reconnects_total

    async def start(self) -> None:
        if self._producer is None:
            self._producer = AIOKafkaProducer(**kafka_options.producer(self.settings))
            await self._producer.start()
            self._watch = asyncio.create_task(
                HEALTH.watch("broker", broker_reachable(self.settings.kafka_bootstrap_servers or "")))

    async def stop(self) -> None:
        """Flush what is queued (without raising: the caller's own flush already reported) and stop."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._producer is not None:
            await self._producer.flush()
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> "Publisher":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("Publisher.start() was not awaited")
        return self._producer

    async def send(self, topic: str, key: str, record: Record) -> asyncio.Future:
        """Queue one record; the returned future resolves on the broker's ack (``flush`` waits for it)."""
        return self._track(await self.producer.send(topic, record.dumps(), key=key.encode()))

    def _track(self, future: asyncio.Future) -> asyncio.Future:
        self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: asyncio.Future) -> None:
        self._pending.discard(future)
        if self._failure is None:
            self._failure = KafkaError("send cancelled") if future.cancelled() else future.exception()

    async def send_and_wait(self, topic: str, key: str, record: Record) -> None:
        await self.producer.send_and_wait(topic, record.dumps(), key=key.encode())

    async def dead_letter(self, source: str, raw: bytes | str | None, reason: str, *,
                          topic: str | None = None, key: str | None = None) -> None:
        DEADLETTERED.labels(source, reason_kind(reason)).inc()
        log.info("dead-lettered from %s: %s", source, reason)
        letter = DeadLetter(source=source, topic=topic, key=key, reason=reason,
                            raw=DeadLetter.text(raw), ts=now_ms())
        self._track(await self.producer.send(self.settings.topic_deadletter, letter.dumps(), key=source.encode()))

    async def flush(self) -> None:
        """Send what is queued and wait for every ack; raise the first failure (a KafkaError)."""
        await self.producer.flush()
        if self._pending:
            await asyncio.wait(list(self._pending))
        if self._failure is not None:
            raise self._failure

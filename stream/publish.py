"""Producing chaincast records outside the Faust app (producers, the retrainer): keyed sends and dead letters.

A lazily started aiokafka producer configured from the settings (acks=all;
idempotent on real Kafka, one record per batch on the embedded broker).
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaProducer
from chaincast.models.timeunits import now_ms
from chaincast.stream.metrics import DEADLETTERED, reason_kind
from chaincast.stream.records import DeadLetter, Record
from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._producer is None:
            self._producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap_servers,
                max_request_size=max(self.settings.max_message_bytes * 2, 1_048_576),
                **self.settings.producer_config(),
            )
            await self._producer.start()

    async def stop(self) -> None:
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

    async def send(self, topic: str, key: str, record: Record) -> None:
        """Queue one record; the returned future resolves on the broker's ack."""
        await self.producer.send(topic, record.dumps(), key=key.encode())

    async def send_and_wait(self, topic: str, key: str, record: Record) -> None:
        await self.producer.send_and_wait(topic, record.dumps(), key=key.encode())

    async def dead_letter(self, source: str, raw: bytes | str | None, reason: str, *,
                          topic: str | None = None, key: str | None = None) -> None:
        DEADLETTERED.labels(source, reason_kind(reason)).inc()
        log.info("dead-lettered from %s: %s", source, reason)
        letter = DeadLetter(source=source, topic=topic, key=key, reason=reason,
                            raw=DeadLetter.text(raw), ts=now_ms())
        await self.producer.send(self.settings.topic_deadletter, letter.dumps(), key=source.encode())

    async def flush(self) -> None:
        await self.producer.flush()

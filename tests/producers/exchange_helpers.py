"""Helpers for the exchange producer tests: history slices, a settings fixture, reading a topic back.

A plain module, not a conftest: tests/producers is shared with the chain producer's tests.
Test modules import the fixture by name (``from exchange_helpers import exchange_settings``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from chaincast.stream import kafka_options
from chaincast.stream.settings import Settings

EXPORT = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "binance_export"
BTC_DAY = EXPORT / "BTCUSDT-1m-2022-09-05.csv.gz"
ETH_DAY = EXPORT / "ETHUSDT-1m-2022-08-14.csv.gz"


@pytest.fixture
def exchange_settings(settings_for) -> Callable[..., Settings]:
    """Settings on the embedded broker (every topic the test's own, see settings_for) and a quick backoff."""
    def build(**env: str) -> Settings:
        return settings_for(**{
            "CHAINCAST_EXCHANGE_BACKOFF_INITIAL_S": "0.05",
            "CHAINCAST_EXCHANGE_BACKOFF_MAX_S": "0.5",
            **env,
        })
    return build


async def until(condition: Callable[[], bool], poll: float = 0.001) -> None:
    """Wait for a condition; callers bound it with ``asyncio.timeout`` (a hang guard, not an assertion)."""
    while not condition():
        await asyncio.sleep(poll)


async def read_topic(settings: Settings, topic: str, done: Callable[[list[ConsumerRecord]], bool],
                     partitions: int | None = None, guard_s: float = 60.0) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the beginning, in partition order, until ``done(records)``."""
    consumer = AIOKafkaConsumer(**kafka_options.consumer(settings, enable_auto_commit=False,
                                                        auto_offset_reset="earliest"))
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions or settings.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        records: list[ConsumerRecord] = []
        async with asyncio.timeout(guard_s):
            while not done(records):
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
        # Anything beyond "done" would be a duplicate: read on briefly to catch it.
        for batch in (await consumer.getmany(timeout_ms=500)).values():
            records.extend(batch)
        return records
    finally:
        await consumer.stop()

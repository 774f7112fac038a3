"""Helpers for tests that run real processes against the embedded broker and Redis."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from chaincast.consumers.promotion import announce
from chaincast.consumers.registry import ModelEntry, Registry
from chaincast.deploy.embedded import Process
from chaincast.models.build import build_model
from chaincast.models.history import load_bars
from chaincast.producers.replay import Market
from chaincast.stream import kafka_options
from chaincast.stream.settings import Settings
from chaincast.stream.topics import ensure_topics
from tests.conftest import PROJECT_DATA

DAY = 1440


def day_of(symbol: str) -> np.ndarray:
    """The first day of the bundled week of ``symbol``."""
    return load_bars(next(PROJECT_DATA.glob(f"{symbol}-1m-*.csv.gz")))[:DAY]


async def read_topic(settings: Settings, topic: str, until: Callable[[list], bool], timeout: float = 120.0) -> list:
    """All messages of ``topic`` from the start, until ``until(messages)`` or the timeout."""
    consumer = AIOKafkaConsumer(topic, **kafka_options.consumer(settings, group_id=None, auto_offset_reset="earliest",
                                                              enable_auto_commit=False))
    await consumer.start()
    out: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(out):
            for msgs in (await consumer.getmany(timeout_ms=300)).values():
                out.extend(msgs)
    finally:
        await consumer.stop()
    return out


async def read_all(settings: Settings, topic: str, timeout: float = 120.0) -> list:
    """Everything ``topic`` holds now: every partition read from its start to the end offset seen at start.

    Unlike ``read_topic`` it knows when it is done (no condition, no timeout to wait out) and
    reads exactly the partitions the broker names; a partition it cannot read to its end
    within ``timeout`` is an error naming the partition and both offsets.
    """
    consumer = AIOKafkaConsumer(**kafka_options.consumer(settings, group_id=None, auto_offset_reset="earliest",
                                                          enable_auto_commit=False))
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while not (parts := await kafka_options.partitions_for(consumer, topic)):
            assert time.monotonic() < deadline, f"topic {topic} not in the cluster metadata"
            await asyncio.sleep(0.5)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list = []
        while behind := [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            assert time.monotonic() < deadline, {
                f"{tp.partition}": (await consumer.position(tp), end[tp]) for tp in behind}
            for msgs in (await consumer.getmany(*behind, timeout_ms=500)).values():
                out.extend(m for m in msgs if m.offset < end[TopicPartition(m.topic, m.partition)])
    finally:
        await consumer.stop()
    return out


async def send_raw(settings: Settings, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(**kafka_options.producer(settings))
    await producer.start()
    try:
        for key, value in items:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def start_worker(settings: Settings, log_dir: Path) -> Process:
    env = {**os.environ, **settings.env(), "CHAINCAST_METRICS_PORT": "0"}
    log_dir.mkdir(parents=True, exist_ok=True)
    return Process("worker", [sys.executable, "-m", "chaincast.deploy.cli", "worker"], env=env,
                   log_path=log_dir / "worker.log").start()


@pytest.fixture
def served(settings_for) -> Callable[..., tuple[Settings, ModelEntry]]:
    """Settings with topics created and a model announced (persistence unless told: fast to fit)."""

    def make(family: str = "persistence", **env: str) -> tuple[Settings, ModelEntry]:
        settings = settings_for(**env)
        return settings, serve_model(settings, family)

    return make


def serve_model(settings: Settings, family: str = "persistence") -> ModelEntry:
    """Create the topics, fit ``family`` on a real day, make it the champion and announce it."""
    asyncio.run(ensure_topics(settings))
    registry = Registry(settings.registry_dir)
    entry = build_model([day_of("BTCUSDT")], family, settings.window, settings.horizon, registry,
                        name=settings.model_name)
    registry.set_champion(settings.model_name, entry.version)
    asyncio.run(announce(settings, settings.model_name, entry))
    return entry


def markets() -> list[Market]:
    return [Market(s, day_of(s)) for s in ("BTCUSDT", "ETHUSDT")]

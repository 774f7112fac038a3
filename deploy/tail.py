"""`chaincast tail`: follow a topic from the command line."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer

from chaincast.stream import kafka_options
from chaincast.stream.settings import Settings


async def follow(settings: Settings, topic: str, from_beginning: bool, limit: int | None,
                 idle_timeout: float | None, echo: Callable[[str], None]) -> int:
    consumer = AIOKafkaConsumer(topic, **kafka_options.consumer(
        settings, group_id=None, auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False))
    await consumer.start()
    seen = 0
    last = time.monotonic()
    try:
        while limit is None or seen < limit:
            batches = await consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                for msg in messages:
                    key = msg.key.decode("utf-8", "backslashreplace") if msg.key else ""
                    echo(f"{key}\t{msg.value.decode('utf-8', 'backslashreplace') if msg.value else ''}")
                    seen += 1
                    last = time.monotonic()
                    if limit is not None and seen >= limit:
                        return seen
            if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                break
    finally:
        await consumer.stop()
    return seen

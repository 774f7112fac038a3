"""Every worker's view of recent on-chain activity, for joining into bars.

Each worker follows ``chain.blocks`` (one partition, low volume) from its start
with a groupless consumer, so whichever partitions of the trades topic a worker
owns, its bars can carry the chain features of their minute. Retractions
(``reorged=true``) remove the orphaned block's contribution.

The join is made when a bar closes, with the blocks seen by then: a block that
reaches the worker after the bar closed is not joined into it. At start, the
bars agent waits until this view has caught up with the topic (``caught_up``),
so a restarted worker joins what an uninterrupted one would have.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from chaincast.stream.chainfeatures import ChainMinutes
from chaincast.stream.records import Bar, Block
from chaincast.stream import kafka_options
from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)


def with_chain(bar: Bar, minutes: ChainMinutes) -> Bar:
    features = minutes.features_for(bar.ts)
    return bar if features is None else bar.model_copy(update={"chain": features})


async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


async def watch_chain(settings: Settings, minutes: ChainMinutes, caught_up: asyncio.Event,
                      stopping: asyncio.Event | None = None) -> None:
    consumer = AIOKafkaConsumer(**kafka_options.consumer(settings, group_id=None, auto_offset_reset="earliest",
                                                          enable_auto_commit=False))
    await consumer.start()
    try:
        partitions = [TopicPartition(settings.topic_blocks, p)
                      for p in sorted(await kafka_options.partitions_for(consumer, settings.topic_blocks) or {0})]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while stopping is None or not stopping.is_set():
            if not caught_up.is_set() and await _reached(consumer, ends):
                caught_up.set()
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for msg in messages:
                    try:
                        minutes.update(Block.loads(msg.value))
                    except ValidationError as exc:  # the producer validated it; log, never stop the worker
                        log.error("unreadable block at offset %d: %s", msg.offset, exc.errors()[0]["msg"])
    finally:
        await consumer.stop()

"""The serving model of a worker, and the watcher that swaps it.

Every worker reads the compacted ``models.updates`` topic from its start with a
plain consumer (no group: each worker must see every update, and a worker that
starts later must find the current champion). A new version is loaded off the
event loop, verified (sha256, smoke inference, feature list), and swapped in
with one reference assignment; a model that fails is refused, reported, and the
old one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from models.serving import Forecaster, ModelRejected
from stream.metrics import MODEL_INFO, MODEL_LOADED_AT, MODELS_REFUSED
from stream.records import ModelUpdate
from stream.settings import Settings

log = logging.getLogger(__name__)


def uri_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


class ModelSlot:
    """Holds the serving Forecaster; ``current`` is replaced atomically."""

    def __init__(self, name: str, threads: int = 1) -> None:
        self.name = name
        self.threads = threads
        self.current: Forecaster | None = None
        self.ready = asyncio.Event()

    async def load(self, update: ModelUpdate) -> Forecaster:
        """Load and verify off the loop; raises ModelRejected."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, lambda: Forecaster.load(uri_path(update.uri), expected_sha256=update.sha256, threads=self.threads)
        )

    async def offer(self, update: ModelUpdate) -> bool:
        """Try an update; swap on success. Returns whether it now serves."""
        if self.current is not None and self.current.version == update.version:
            return True
        try:
            model = await self.load(update)
        except (ModelRejected, OSError) as exc:
            MODELS_REFUSED.labels(self.name).inc()
            log.error("refused model %s %s: %s", update.name, update.version, exc)
            return False
        old = self.current
        self.current = model  # the swap: predictions read this reference once per batch
        if old is not None:
            MODEL_INFO.remove(self.name, old.version, old.family)
        MODEL_INFO.labels(self.name, model.version, model.family).set(1)
        MODEL_LOADED_AT.labels(self.name).set(time.time())
        self.ready.set()
        log.warning("serving model %s version %s (%s)", self.name, model.version, model.family)
        return True


async def watch_models(settings: Settings, slot: ModelSlot,
                       on_swap: Callable[[ModelUpdate], Awaitable[None]] | None = None,
                       stopping: asyncio.Event | None = None) -> None:
    """Follow ``models.updates`` from the beginning for ``slot.name`` until cancelled."""
    consumer = AIOKafkaConsumer(
        settings.topic_models, bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None, auto_offset_reset="earliest", enable_auto_commit=False,
    )
    await consumer.start()
    try:
        while stopping is None or not stopping.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                for msg in messages:
                    if msg.key is not None and msg.key.decode() != slot.name:
                        continue
                    try:
                        update = ModelUpdate.loads(msg.value)
                    except ValidationError as exc:
                        MODELS_REFUSED.labels(slot.name).inc()
                        log.error("unreadable model update at offset %d: %s", msg.offset, exc)
                        continue
                    if await slot.offer(update) and on_swap is not None:
                        await on_swap(update)
    finally:
        await consumer.stop()

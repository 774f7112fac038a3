"""The serving models of a worker, and the watcher that swaps them.

A market worker serves one model per forecaster of ``CHAINCAST_FORECASTS``
(``ModelSlots``: one ``ModelSlot`` per model name, the default forecaster first);
one consumer of ``models.updates`` feeds every slot by the record's key (the model name).
Every worker reads the compacted ``models.updates`` topic from its start with a
plain consumer (no group: each worker must see every update, and a worker that
starts later must find the current champion). On start it reads up to the end
of the topic first and offers only the newest update (falling back to older
ones if that is refused), so a late worker never serves a stale version even
for one bar. After that, each new version is loaded off the event loop,
verified (signature and location: ``stream.model_trust``; sha256, smoke
inference, feature list, the stream's window), and
swapped in with one reference assignment; a model that fails is refused,
reported, and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from chaincast.models.serving import Forecaster, ModelRejected
from chaincast.models.targets import ForecastSpec
from chaincast.stream.metrics import MODEL_INFO, MODEL_LOADED_AT, MODEL_SWAP, MODELS_REFUSED
from chaincast.stream.model_trust import trusted_path, uri_path, verify
from chaincast.stream.records import ModelUpdate
from chaincast.stream import kafka_options
from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)

OnSwap = Callable[[ModelUpdate], Awaitable[None]]
OnRefused = Callable[[ModelUpdate, str], Awaitable[object]]  # (update, dead-letter reason)


class ModelSlot:
    """Holds the serving Forecaster; ``current`` is replaced atomically."""

    def __init__(self, name: str, threads: int = 1, window: int | None = None, *, registry_dir: Path | None = None,
                 signing_key: str | None = None, max_bytes: int = 256_000_000, spec: ForecastSpec | None = None) -> None:
        self.name = name
        self.spec = spec  # the (target, horizon) this slot serves; a model forecasting another is refused
        self.threads = threads
        self.window = window  # the stream builds windows of this length; another shape would crash predict
        self.registry_dir = registry_dir  # stream.model_trust: updates are trusted only from here ...
        self.signing_key = signing_key  # ... and, with a key, only when signed with it
        self.max_bytes = max_bytes
        self.current: Forecaster | None = None
        self.ready = asyncio.Event()

    def serving(self) -> list[Forecaster]:
        """The forecaster of this slot, if one serves."""
        return [] if self.current is None else [self.current]

    @classmethod
    def trusting(cls, settings: Settings) -> dict[str, Any]:
        """The trust arguments every worker slot takes from the settings (``stream.model_trust``)."""
        return {"registry_dir": settings.registry_dir, "signing_key": settings.model_signing_key,
                "max_bytes": settings.model_max_bytes}

    def path_of(self, update: ModelUpdate) -> Path:
        """The file ``update`` names, once trusted; every slot's loader reads only this. ModelRejected otherwise."""
        # No registry given (a test slot): the uri is taken as it is; workers always give one.
        if self.registry_dir is None:
            return uri_path(update.uri)
        return trusted_path(update, self.registry_dir, self.signing_key, self.max_bytes)

    def _load(self, update: ModelUpdate) -> Forecaster:
        model = Forecaster.load(self.path_of(update), expected_sha256=update.sha256, threads=self.threads)
        if self.window is not None and model.window != self.window:
            raise ModelRejected(f"model window {model.window} differs from the stream's window {self.window}")
        if self.spec is not None:
            served = ForecastSpec(str(model.card.get("target", "log_return")), model.horizon)
            if served != self.spec:
                raise ModelRejected(f"model forecasts {served.label}, the slot {self.name} serves {self.spec.label}")
        return model

    async def load(self, update: ModelUpdate) -> Forecaster:
        """Load and verify off the loop; raises ModelRejected."""
        return await asyncio.get_running_loop().run_in_executor(None, self._load, update)

    async def offer(self, update: ModelUpdate, on_refused: OnRefused | None = None) -> bool:
        """Try an update; swap on success. Returns whether it now serves."""
        if self.current is not None and (self.current.version, self.current.sha256) == (update.version, update.sha256):
            if not self.signing_key or verify(update, self.signing_key):
                return True  # a re-announcement; the same version with another sha is checked (and refused) below
        try:
            model = await self.load(update)
        except ModelRejected as exc:
            MODELS_REFUSED.labels(self.name).inc()
            log.error("refused model %s %s: %s", update.name, update.version, exc)
            if on_refused is not None:
                await on_refused(update, f"model_refused: {exc}")
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


class ModelSlots:
    """The slots of every served forecaster, by model name, the default forecaster's first.

    Trades are held until the DEFAULT forecaster serves (``ready``); the others join
    when their first model arrives, so the return forecast never waits on, say, a
    volatility model that failed to train. ``serving()`` is read once per batch.
    """

    def __init__(self, slots: list[ModelSlot]) -> None:
        if not slots:
            raise ValueError("at least one slot")
        self.by_name = {s.name: s for s in slots}
        self.default = slots[0]

    @classmethod
    def of(cls, settings: Settings) -> ModelSlots:
        """One slot per forecaster of ``settings.forecast_specs``."""
        specs = settings.forecast_specs
        return cls([ModelSlot(spec.model_name(settings.model_name, default=spec == specs[0]),
                              threads=settings.onnx_threads, window=settings.window, spec=spec,
                              **ModelSlot.trusting(settings)) for spec in specs])

    @property
    def ready(self) -> asyncio.Event:
        return self.default.ready

    def __iter__(self) -> Iterator[ModelSlot]:
        return iter(self.by_name.values())

    def get(self, name: str) -> ModelSlot | None:
        return self.by_name.get(name)

    def serving(self) -> list[Forecaster]:
        """The models a closed bar is forecast with: one per forecaster that has one, default first."""
        return [s.current for s in self.by_name.values() if s.current is not None]


def _decode(slots: ModelSlots, key: bytes | None, value: bytes | None, offset: int) -> ModelUpdate | None:
    """The update for one of ``slots`` (by the record's key, else by its name), None for another model's."""
    if key is not None and slots.get(key.decode(errors="replace")) is None:
        return None
    try:
        update = ModelUpdate.loads(value or b"")
    except ValidationError as exc:
        name = key.decode(errors="replace") if key is not None else slots.default.name
        MODELS_REFUSED.labels(name).inc()
        log.error("unreadable model update at offset %d: %s", offset, exc)
        return None
    if key is None and slots.get(update.name) is None:
        return None
    return update


def _slot_of(slots: ModelSlots, key: bytes | None, update: ModelUpdate) -> ModelSlot:
    # The key names the slot (the retrainer keys each update by its model name); the value's name only without one.
    return slots.by_name[key.decode(errors="replace")] if key is not None else slots.by_name[update.name]


async def _assign(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic``, from the beginning; waits for the topic to exist."""
    while not (parts := await kafka_options.partitions_for(consumer, topic)):
        await asyncio.sleep(0.5)  # the topic may not be created yet
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return tps


async def _catch_up(consumer: AIOKafkaConsumer, tps: list[TopicPartition],
                    slots: ModelSlots) -> dict[str, list[ModelUpdate]]:
    """Every update of each slot up to the end offsets seen at start, oldest first, by slot name."""
    end = await consumer.end_offsets(tps)
    found: dict[str, list[ModelUpdate]] = {}
    idle = 0
    # An empty poll also ends the catch-up: Tansu can over-report the end offset (see DESIGN.md).
    while idle < 3 and any([await consumer.position(tp) < end[tp] for tp in tps]):
        batches = await consumer.getmany(*tps, timeout_ms=500)
        idle = 0 if batches else idle + 1
        for messages in batches.values():
            for m in messages:
                if (u := _decode(slots, m.key, m.value, m.offset)) is not None:
                    found.setdefault(_slot_of(slots, m.key, u).name, []).append(u)
    return found


async def watch_models(settings: Settings, slots: ModelSlot | ModelSlots, on_swap: OnSwap | None = None,
                       stopping: asyncio.Event | None = None, on_refused: OnRefused | None = None) -> None:
    """Serve the current champion of every slot, then follow ``models.updates`` until cancelled.

    One plain consumer for all the slots; at start each slot is offered its newest
    update first (older ones only when that is refused), the default slot last so
    that, once trades flow, the other forecasters found in the topic serve too.
    """
    if isinstance(slots, ModelSlot):
        slots = ModelSlots([slots])
    consumer = AIOKafkaConsumer(**kafka_options.consumer(settings, group_id=None, auto_offset_reset="earliest",
                                                          enable_auto_commit=False))
    await consumer.start()
    try:
        tps = await _assign(consumer, settings.topic_models)
        found = await _catch_up(consumer, tps, slots)
        for slot in sorted(slots, key=lambda s: s is slots.default):
            for update in reversed(found.get(slot.name, [])):  # newest first; older ones only on refusal
                if await slot.offer(update, on_refused):
                    if on_swap is not None:
                        await on_swap(update)
                    break
        while stopping is None or not stopping.is_set():
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for msg in messages:
                    if (update := _decode(slots, msg.key, msg.value, msg.offset)) is None:
                        continue
                    slot = _slot_of(slots, msg.key, update)
                    before = slot.current
                    if await slot.offer(update, on_refused):
                        if slot.current is not before and update.created_at:
                            MODEL_SWAP.observe(max(time.time() - update.created_at / 1000, 0.0))
                        if on_swap is not None:
                            await on_swap(update)
    finally:
        await consumer.stop()

"""The served fee models of a worker: one slot per ``{prefix}.{target}.h{horizon}``, hot-swapped.

Like the market model (``stream.models``), every worker follows the compacted
``models.updates`` topic from its start with a groupless consumer: at start it
offers each fee name its newest update (older ones only if that is refused), then
every new one. A model is loaded off the event loop and verified (trusted only
from the registry and, with a key, signed: ``stream.model_trust``; sha256, the fee
feature list, the worker's fee window, a smoke inference); a refused model is
dead-lettered and leaves the old one serving.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from chaincast.models.fees import FEE_FEATURES, FEE_TARGETS
from chaincast.models.serving import Forecaster, ModelRejected
from chaincast.stream.metrics import MODELS_REFUSED
from chaincast.stream.model_slot import ModelSlot, OnRefused, _assign
from chaincast.stream.records import ModelUpdate
from chaincast.stream import kafka_options
from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)


class FeeSlot(ModelSlot):
    """A ModelSlot whose models take the fee features."""

    def __init__(self, name: str, target: str, horizon: int, threads: int, window: int, **trust: Any) -> None:
        super().__init__(name, threads, window, **trust)
        self.target, self.horizon = target, horizon

    def _load(self, update: ModelUpdate) -> Forecaster:
        model = Forecaster.load(self.path_of(update), expected_sha256=update.sha256, threads=self.threads,
                                features=FEE_FEATURES)
        if model.window != self.window:
            raise ModelRejected(f"model window {model.window} differs from the fee window {self.window}")
        if (model.card.get("target"), model.horizon) != (self.target, self.horizon):
            raise ModelRejected(f"model forecasts {model.card.get('target')} h={model.horizon}, "
                                f"the slot {self.name} serves {self.target} h={self.horizon}")
        return model


def fee_slots(settings: Settings) -> dict[str, FeeSlot]:
    trust = FeeSlot.trusting(settings)
    return {f"{settings.fee_model_prefix}.{t}.h{h}": FeeSlot(f"{settings.fee_model_prefix}.{t}.h{h}", t, h,
                                                             settings.onnx_threads, settings.fee_window, **trust)
            for t in FEE_TARGETS for h in settings.fee_horizons}


def serving(slots: dict[str, FeeSlot]) -> dict[tuple[str, int], Forecaster]:
    """(target, horizon) -> the model serving now (read once per batch, so a swap never splits one)."""
    return {(s.target, s.horizon): s.current for s in slots.values() if s.current is not None}


def _decode(slots: dict[str, FeeSlot], key: bytes | None, value: bytes | None) -> ModelUpdate | None:
    name = (key or b"").decode(errors="replace")
    if name not in slots:
        return None
    try:
        return ModelUpdate.loads(value or b"")
    except ValidationError as exc:
        MODELS_REFUSED.labels(name).inc()
        log.error("unreadable fee model update for %s: %s", name, exc.errors()[0]["msg"])
        return None


async def watch_fee_models(settings: Settings, slots: dict[str, FeeSlot], stopping: asyncio.Event | None = None,
                           caught_up: asyncio.Event | None = None, on_refused: OnRefused | None = None) -> None:
    """Serve the current champion of every fee slot, then follow ``models.updates`` until cancelled."""
    consumer = AIOKafkaConsumer(**kafka_options.consumer(settings, group_id=None, auto_offset_reset="earliest",
                                                          enable_auto_commit=False))
    await consumer.start()
    try:
        tps = await _assign(consumer, settings.topic_models)
        end = await consumer.end_offsets(tps)
        found: dict[str, list[ModelUpdate]] = {}
        idle = 0
        while idle < 3 and any([await consumer.position(tp) < end[tp] for tp in tps]):
            batches = await consumer.getmany(*tps, timeout_ms=500)
            idle = 0 if batches else idle + 1
            for messages in batches.values():
                for m in messages:
                    if (u := _decode(slots, m.key, m.value)) is not None:
                        found.setdefault(u.name, []).append(u)
        for name, updates in found.items():
            for update in reversed(updates):  # newest first; older ones only on refusal
                if await slots[name].offer(update, on_refused):
                    break
        if caught_up is not None:
            caught_up.set()
        while stopping is None or not stopping.is_set():
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for m in messages:
                    if (u := _decode(slots, m.key, m.value)) is not None:
                        await slots[u.name].offer(u, on_refused)
    finally:
        await consumer.stop()

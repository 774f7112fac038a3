"""The retraining consumer: ``bars.1m`` -> challenger -> (maybe) a new champion.

One consumer group member per model name follows the bars topic. On every
(re)assignment it reads each partition from the beginning to rebuild its
bounded per-symbol history (the broker keeps the bars); bars before the
group's committed offset only rebuild history, bars after it count towards
the schedule. A round starts every ``retrain_every_bars`` new bars, every
``retrain_every_s`` seconds, or at once when the live scorer asks (a Redis
flag). The round itself (``consumers.challenge.run_challenge``) runs in a
worker process so the event loop keeps consuming; only when it returns does
the retrainer write the registry (atomic files), move the champion pointer,
announce the update, and commit the offsets the round consumed. A retrainer
killed mid-round therefore leaves nothing half-written and, restarted, finds
those bars uncommitted and trains again. A registry write that fails (a full
disk) is logged, counted as a ``registry_write_failed`` refusal, and retried
with backoff (``CHAINCAST_REGISTRY_RETRY_S``, doubling) while the old champion
serves; no round starts and no offset is committed until it lands. What a
killed write left behind is swept at start (``Registry.sweep``).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from pydantic import ValidationError

from chaincast.consumers.bar_history import BarHistory
from chaincast.consumers.challenge import ChallengeJob, ChallengeResult, run_challenge
from chaincast.consumers.promotion import announce
from chaincast.consumers.registry import ModelEntry, Registry, WriteBackoff
from chaincast.models.targets import ForecastSpec
from chaincast.models.logs import setup_logging
from chaincast.stream import kafka_options
from chaincast.stream.metrics import (PROMOTIONS, REFUSALS, RETRAIN_ACTIVE, RETRAIN_HISTORY, RETRAIN_RUNS, RETRAIN_SECONDS,
                            VAL_MAE, VAL_SKILL)
from chaincast.stream.records import Bar
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)


def _child_init() -> None:
    setup_logging()


def training_pool() -> ProcessPoolExecutor:
    # spawn, not fork: the parent runs an event loop and aiokafka threads that a fork would copy mid-state.
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_child_init)


class _Rewind(ConsumerRebalanceListener):
    """On assignment: remember the committed offsets, then read every partition from the start."""

    def __init__(self, retrainer: "Retrainer") -> None:
        self.r = retrainer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        consumer = self.r.consumer
        for tp in assigned:
            self.r.replay_until[tp] = await consumer.committed(tp) or 0
        if assigned:
            await consumer.seek_to_beginning(*assigned)
        log.warning("retrainer assigned %d partition(s); rebuilding history from the start", len(assigned))


@dataclass
class _Round:
    """A finished round whose outcome is not durable yet: its offsets are committed only once it is."""

    result: ChallengeResult
    trigger: str
    started: float
    offsets: dict[TopicPartition, int]


class Retrainer:
    """Retrains ONE forecaster of ``CHAINCAST_FORECASTS`` (the default one unless ``spec`` says otherwise)."""

    def __init__(self, settings: Settings, registry: Registry | None = None, pool: Executor | None = None,
                 spec: ForecastSpec | None = None) -> None:
        self.settings = settings
        specs = settings.forecast_specs
        self.spec = spec or specs[0]
        self.name = self.spec.model_name(settings.model_name, default=self.spec == specs[0])
        self.registry = registry or Registry(settings.registry_dir)
        self.pool = pool
        self.history = BarHistory(settings.history_bars)
        self.replay_until: dict[TopicPartition, int] = {}
        self.positions: dict[TopicPartition, int] = {}
        self.new_bars = 0
        self.last_round = time.monotonic()
        self.job: asyncio.Future[ChallengeResult] | None = None
        self.job_meta: tuple[str, float, dict[TopicPartition, int]] = ("", 0.0, {})
        self.rounds = 0
        self.rounds_vs_champion = 0  # alpha spending: each round against one champion tests at a lower level
        self.unwritten: _Round | None = None  # a winner the registry refused (disk full): retried when backoff is due
        self.backoff = WriteBackoff(settings.registry_retry_s)
        self._consumer: AIOKafkaConsumer | None = None
        self._redis: aioredis.Redis | None = None

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "run() creates the consumer"
        return self._consumer

    async def run(self, stopping: asyncio.Event | None = None) -> None:
        s = self.settings
        self._consumer = AIOKafkaConsumer(**kafka_options.consumer(
            s, group_id=f"{s.app_id}-retrainer-{self.name}", enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_interval_ms=3_600_000,  # rounds run beside the loop; polling never pauses long anyway
        ))
        self.consumer.subscribe([s.topic_bars], listener=_Rewind(self))
        await self.consumer.start()
        own_pool = self.pool is None
        self.pool = self.pool or training_pool()
        try:
            for path in await asyncio.to_thread(self.registry.sweep):
                log.warning("removed %s, left by a registry write that never finished", path.name)
            await self._reannounce()
            while stopping is None or not stopping.is_set():
                await self.step()
        finally:
            if own_pool:
                self.pool.shutdown(wait=False, cancel_futures=True)
            await self.consumer.stop()
            if self._redis is not None:
                await self._redis.aclose()
            RETRAIN_ACTIVE.set(0)

    async def step(self) -> None:
        """One poll: ingest bars, finish a done round, start a due one."""
        batches = await self.consumer.getmany(timeout_ms=500, max_records=5_000)
        for tp, messages in batches.items():
            for msg in messages:
                self._ingest(tp, msg.offset, msg.value)
            self.positions[tp] = messages[-1].offset + 1
        if self.job is not None and self.job.done():
            await self._finish()
        elif self.unwritten is not None and self.backoff.due():
            await self._land(self.unwritten)
        if self.job is None and self.unwritten is None and (trigger := await self._due()):
            self._start(trigger)

    def _ingest(self, tp: TopicPartition, offset: int, raw: bytes | None) -> None:
        try:
            bar = Bar.loads(raw or b"")
        except ValidationError as exc:  # the bars agent validated it; a stranger wrote this
            log.warning("skipping an unreadable bar at %s:%d: %s", tp.topic, offset, exc.errors()[0]["msg"])
            return
        if self.history.add(bar) and offset >= self.replay_until.get(tp, 0):
            self.new_bars += 1

    async def _due(self) -> str | None:
        s = self.settings
        if await self._take_flag():
            return "live"
        if s.retrain_every_bars and self.new_bars >= s.retrain_every_bars:
            return "bars"
        if s.retrain_every_s and self.new_bars and time.monotonic() - self.last_round >= s.retrain_every_s:
            return "timer"
        return None

    async def _take_flag(self) -> bool:
        if not self.settings.redis_url:
            return False
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(self.settings.redis_url, decode_responses=True)
        try:
            reason = await self._redis.getdel(RedisLayout.of(self.settings).retrain_flag(self.name))
        except (RedisConnectionError, RedisTimeoutError) as exc:  # Redis restarting: the schedule goes on
            log.warning("cannot read the retrain flag: %s", exc)
            return False
        if reason:
            log.warning("live scoring asks for a retrain now: %s", reason)
        return bool(reason)

    def _start(self, trigger: str) -> None:
        s = self.settings
        champion = self.registry.champion(self.name)
        job = ChallengeJob(
            bars=self.history.arrays(), name=self.name, family=s.retrain_family, window=s.window,
            horizon=self.spec.horizon, target=self.spec.target, val_bars=s.retrain_val_bars, max_epochs=s.retrain_max_epochs,
            margin=s.promote_margin, alpha=s.retrain_alpha,
            champion_path=str(champion.onnx_path) if champion else None,
            champion_sha256=champion.sha256 if champion else None,
            fallback=trigger == "live", trigger=trigger, seed=self.rounds,
            parent=champion.version if champion else None, round_index=self.rounds_vs_champion + 1,
        )
        for sym, n in self.history.sizes().items():
            RETRAIN_HISTORY.labels(sym).set(n)
        self.rounds += 1
        self.rounds_vs_champion += 1
        log.warning("round %d (%s): training a %s challenger on %d bars", self.rounds, trigger, job.family,
                    len(self.history))
        # The offsets this round has seen: committed only once its outcome is durable.
        self.job_meta = (trigger, time.monotonic(), dict(self.positions))
        self.new_bars, self.last_round = 0, time.monotonic()
        RETRAIN_ACTIVE.set(1)
        self.job = asyncio.get_running_loop().run_in_executor(self.pool, run_challenge, job)

    async def _finish(self) -> None:
        trigger, started, offsets = self.job_meta
        job, self.job = self.job, None
        assert job is not None
        RETRAIN_ACTIVE.set(0)
        try:
            result = job.result()
        except BrokenProcessPool:  # the training process died (OOM killer, a signal): a fresh pool, a later round
            log.error("the training process died; the round is dropped")
            REFUSALS.labels("training_crashed").inc()
            self.pool = training_pool()
            return
        except Exception:  # noqa: BLE001 - whatever a round raised, it is that round's failure, not the loop's
            log.exception("the round failed; it is dropped")
            REFUSALS.labels("round_failed").inc()
            return
        for role, sc in result.scores.items():
            VAL_MAE.labels(role).set(sc.mae)
            VAL_SKILL.labels(role).set(sc.skill)
        await self._land(_Round(result, trigger, started, offsets))

    async def _land(self, done: _Round) -> None:
        """Make a round's outcome durable (a promotion, or a refusal), then commit what it consumed."""
        result = done.result
        if result.onnx is not None and result.card is not None:
            try:
                entry = await self.promote(result)
            except OSError as exc:  # a full disk, a quota, a read-only mount: the old champion serves on
                self._registry_failed(done, exc)
                return
            self.unwritten = None
            self.backoff.landed()
            self.rounds_vs_champion = 0
            PROMOTIONS.labels(result.kind).inc()
            log.warning("promoted %s %s (%s; p=%s)", result.card["family"], entry.version, result.kind,
                        result.decision.p_value)
        else:
            REFUSALS.labels(result.decision.reason).inc()
            log.warning("challenger refused: %s (p=%s; %s)", result.decision.reason, result.decision.p_value,
                        {k: round(v.mae, 7) for k, v in result.scores.items()})
        offsets = {tp: o for tp, o in done.offsets.items() if tp in self.consumer.assignment()}  # not revoked since
        if offsets:
            await self.consumer.commit(offsets)
        RETRAIN_RUNS.labels(done.trigger).inc()
        RETRAIN_SECONDS.observe(time.monotonic() - done.started)

    def _registry_failed(self, done: _Round, exc: OSError) -> None:
        self.unwritten = done
        champion = self.registry.champion(self.name)
        self.backoff.refused(self.registry, exc, champion.version if champion else "the reference")

    async def promote(self, result: ChallengeResult) -> ModelEntry:
        """Registry write (atomic, write-once), champion pointer, then the announcement."""
        assert result.onnx is not None and result.card is not None
        name = self.name
        entry = await asyncio.to_thread(self.registry.put, result.onnx, result.card)
        entry = self.registry.set_champion(name, entry.version)
        await announce(self.settings, name, entry)
        return entry

    async def _reannounce(self) -> None:
        """Finish a promotion a crash interrupted between the champion pointer and the announcement."""
        champion = self.registry.champion(self.name)
        if champion is not None:
            await announce(self.settings, self.name, champion)


async def run_retrainer(settings: Settings, stopping: asyncio.Event | None = None) -> None:
    """One retrainer per served forecaster, side by side (each its own consumer group and training process)."""
    await asyncio.gather(*(Retrainer(settings, spec=spec).run(stopping) for spec in settings.forecast_specs))

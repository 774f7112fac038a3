"""The processes a bench run drives and how it reads them.

Real ``chaincast worker`` processes, read through their own ``/metrics`` and
through ``/proc`` (RSS, CPU seconds); a pre-loading producer; the drain loop
that times a backlog; the bare-Faust counter (the framework's ceiling).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from aiokafka import AIOKafkaProducer

from chaincast.deploy.bench.plan import partition_of
from chaincast.deploy.embedded import Process, free_port
from chaincast.deploy.metrics import scrape, scrape_samples
from chaincast.deploy.up import child
from chaincast.stream import kafka_options
from chaincast.stream.settings import Settings
from chaincast.stream.topics import ensure_topics, renamed

WORKER_START_S = 300.0  # process start -> serving a model, on a loaded machine
POLL_S = 0.1  # metrics polls, of the fewest series that tell the phase (see drain)
SETTLE_S = 5.0  # fallback: predictions unchanged this long (bars all emitted) = the backlog is done
MESSAGES = "chaincast_trade_messages_total"  # one series: cheap to poll
COMMIT_LAG = "chaincast_consumer_commit_lag_messages"  # per topic and partition; summed: what is left to do
STAGES = "chaincast_forecast_stage_seconds"  # where a batch's forecasts spent their time, by stage
QUIET_CPU = 0.15  # settle: a worker is quiet when it used less than this share of a core ...
QUIET_S = 1.0  # ... over this long
SETTLE_MAX_S = 120.0  # settle gives up waiting after this long (and says how long it waited)
COUNTS = (MESSAGES, "chaincast_trades_total", "chaincast_bars_total", "chaincast_predictions_total")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far, from ``/proc``."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def run_settings(base: Settings, run: str, symbols: Sequence[str], home: Path) -> Settings:
    """Fresh topics, consumer group and Redis prefix for one run, so runs never see each other."""
    suffix = f"bench-{run}"
    return base.model_copy(update={
        "app_id": f"chaincast-{suffix}", "redis_prefix": f"{suffix}:", "home": home, "symbols": list(symbols),
        **renamed(base, suffix),
    })


def broker_name(settings: Settings) -> str:
    """What the run measured: the embedded Tansu or the Kafka broker it was pointed at (or started).

    >>> broker_name(Settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9092", CHAINCAST_EMBEDDED_BROKER="1"))
    'tansu (embedded)'
    >>> broker_name(Settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9092"))
    'kafka at 127.0.0.1:9092'
    """
    if settings.embedded_broker:
        return "tansu (embedded)"
    return f"kafka at {settings.kafka_bootstrap_servers}"


async def preload(settings: Settings, messages: Sequence[tuple[bytes, bytes]], batched: bool = False,
                  topic: str | None = None) -> float:
    """Send everything to the trades topic, wait for every ack; returns the seconds it took.
    ``batched``: many records per batch even on the embedded broker (for topics only counted)."""
    producer = AIOKafkaProducer(**kafka_options.producer(
        settings, **({"max_batch_size": 16_384, "linger_ms": 5} if batched else {})))
    await producer.start()
    t0 = time.perf_counter()
    try:
        futures = [await producer.send(topic or settings.topic_trades, value, key=key) for key, value in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - t0


@dataclass
class Worker:
    proc: Process
    port: int

    def metrics(self, *names: str) -> dict[str, float]:
        """The worker's metrics summed by name: only ``names`` if given (a poll during a timed phase
        then costs the worker a scrape of those alone, not of every market's every series)."""
        return scrape(self.port, timeout=2.0, names=names)

    def stages(self) -> dict[str, tuple[float, float]]:
        """The worker's forecast stages so far (``chaincast_forecast_stage_seconds``): stage -> (seconds, batches)."""
        out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for name, labels, value in scrape_samples(self.port, timeout=2.0, names=[STAGES + "_sum", STAGES + "_count"]):
            out[labels["stage"]][0 if name.endswith("_sum") else 1] += value
        return {stage: (total, count) for stage, (total, count) in out.items()}

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def cpu_s(self) -> float:
        """User + system CPU seconds of the worker process (all its threads) so far."""
        return cpu_s(self.proc.pid)

    def trades_by_symbol(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for name, labels, value in scrape_samples(self.port, timeout=2.0, names=("chaincast_trades_total",)):
            if name == "chaincast_trades_total" and "symbol" in labels:
                out[labels["symbol"]] += value
        return dict(out)

    def wait_for(self, metric: str, timeout: float) -> None:
        """Until the worker reports ``metric`` above zero."""
        deadline = time.monotonic() + timeout
        while self.metrics(metric).get(metric, 0.0) <= 0:
            if not self.proc.alive():
                raise RuntimeError(f"{self.proc.name} exited; see its log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.proc.name} did not report {metric} within {timeout:.0f}s")
            time.sleep(POLL_S)


@contextmanager
def workers(settings: Settings, n: int, log_dir: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        for i in range(n):
            port = free_port()
            started.append(Worker(child(f"worker-{settings.app_id}-{i}", ["worker"], settings, log_dir, port), port))
        yield started
    finally:
        for w in started:
            w.proc.stop(timeout=15)


@dataclass
class Throughput:
    workers: int
    trades: int
    messages: int
    bars: int
    predictions: int
    seconds: float  # first processed message -> last prediction of the backlog
    startup_s: float  # process start -> first processed message
    rss_mb: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)  # each worker's CPU seconds over ``seconds``
    trades_by_worker: list[float] = field(default_factory=list)
    partitions_by_worker: list[list[int]] = field(default_factory=list)

    @property
    def trades_per_s(self) -> float:
        return self.trades / self.seconds

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_s_per_million_trades(self) -> float:
        return sum(self.cpu_s) / self.trades * 1e6

    def shares(self) -> list[dict[str, object]]:
        total = sum(self.trades_by_worker) or 1.0
        return [{"partitions": parts, "trade_share": trades / total}
                for parts, trades in zip(self.partitions_by_worker, self.trades_by_worker)]


def drain(ws: list[Worker], settings: Settings, trades: int, messages: int, bars: int, predictions: int,
          timeout: float, baseline: dict[str, float] | None = None) -> Throughput:
    """Poll the workers' metrics until the backlog is through: every trade folded, every bar
    emitted and every expected forecast made (or, should the expectation be off, no new forecast
    for SETTLE_S). Counts are taken above ``baseline`` (what the workers had done before). The
    clock runs from the first poll that sees a message of the backlog to the last of: all trades
    folded, all bars emitted, the last forecast; CPU from the last poll before that first one."""
    base = baseline or {}
    t0 = time.perf_counter()
    first = None
    reached: dict[str, float] = {}
    last_change = t0
    seen_preds = 0.0
    cpu_before: list[float] = [w.cpu_s() for w in ws]
    totals: dict[str, float] = {}
    while True:
        now = time.perf_counter()
        if now - t0 > timeout:
            raise TimeoutError(f"the backlog was not processed within {timeout:.0f}s (last: {totals})")
        for w in ws:
            if not w.proc.alive():
                raise RuntimeError(f"{w.proc.name} exited; see its log")
        cpu_now = [w.cpu_s() for w in ws]
        # Until every message is in, only the message counter (one sample): the labelled counters
        # have a series per market, and scraping them ten times a second took a fifth of the
        # worker's CPU at 512 markets (py-spy), a cost of the harness that grew with the markets.
        names = COUNTS if totals.get(MESSAGES, 0.0) >= messages else (MESSAGES,)
        samples = [w.metrics(*names) for w in ws]
        totals = {k: sum(s.get(k, 0.0) for s in samples) - base.get(k, 0.0) for k in names}
        if first is None:
            if totals[MESSAGES] > 0:
                first = now
            else:
                cpu_before = cpu_now
        if names is COUNTS and totals["chaincast_predictions_total"] != seen_preds:
            seen_preds, last_change = totals["chaincast_predictions_total"], now
        if totals.get("chaincast_trades_total", 0.0) >= trades:
            reached.setdefault("trades", now)
        if totals.get("chaincast_bars_total", 0.0) >= bars:
            reached.setdefault("bars", now)
        if len(reached) == 2 and (seen_preds >= predictions or now - max(last_change, *reached.values()) >= SETTLE_S):
            assert first is not None
            by_symbol = [w.trades_by_symbol() for w in ws]
            return Throughput(
                len(ws), trades, messages, int(totals["chaincast_bars_total"]), int(seen_preds),
                seconds=max(max(last_change, *reached.values()) - first, 1e-6), startup_s=first - t0,
                rss_mb=[w.rss_mb() for w in ws], cpu_s=[b - a for a, b in zip(cpu_before, cpu_now)],
                trades_by_worker=[sum(s.values()) for s in by_symbol],
                partitions_by_worker=[sorted({partition_of(settings.exchange, sym, settings.partitions)
                                              for sym, n in s.items() if n > 0}) for s in by_symbol])
        time.sleep(POLL_S)


def settle(pids: Sequence[int], timeout: float = SETTLE_MAX_S, behind: Callable[[], float] | None = None) -> float:
    """Wait until every process is quiet (less than ``QUIET_CPU`` of a core over ``QUIET_S``) and
    ``behind()`` (what is still to do, if told) is 0; returns the seconds waited. A drain ends when
    the last forecast is counted, but the work a burst leaves (its write behind, the scorer's
    catch-up) goes on after it: a timed phase that began then would be charged for it. Quiet
    alone is not enough: the scorer works through a lag in paced batches, at a share of a core
    that can pass for quiet (``settle_workers`` asks the workers' commit lag too)."""
    t0 = last_t = time.perf_counter()
    last = [cpu_s(pid) for pid in pids]
    while True:
        time.sleep(QUIET_S)
        now, used = time.perf_counter(), [cpu_s(pid) for pid in pids]
        quiet = all(b - a < QUIET_CPU * (now - last_t) for a, b in zip(last, used))
        if (quiet and (behind is None or behind() <= 0)) or now - t0 > timeout:
            return now - t0
        last, last_t = used, now


def settle_workers(ws: list[Worker], timeout: float = SETTLE_MAX_S) -> float:
    """``settle`` for chaincast workers: quiet, and nothing left uncommitted on any topic they read
    (``chaincast_consumer_commit_lag_messages``, sampled by the worker every ``stream.lag.INTERVAL_S``)."""
    return settle([w.proc.pid for w in ws], timeout,
                  behind=lambda: sum(w.metrics(COMMIT_LAG).get(COMMIT_LAG, 0.0) for w in ws))


def timed_backlog(ws: list[Worker], settings: Settings, messages: Sequence[tuple[bytes, bytes]], trades: int,
                  bars: int, predictions: int, timeout: float, baseline: dict[str, float] | None = None,
                  preloaded: bool = False) -> Throughput:
    """Every worker up and serving first, so that all of them are in the group before the first
    message (on Kafka a worker that joins late takes partitions over mid-run); then the backlog is
    pre-loaded while they run (batched records: faster than the workers read it) and drained.
    ``preloaded``: the backlog is already on the topic (one worker: it cannot join late, and the
    loading producer then shares no core with it, as with the peer), only drained."""
    for w in ws:
        w.wait_for("chaincast_model_loaded_timestamp_seconds", WORKER_START_S)
    if preloaded:
        return drain(ws, settings, trades, len(messages), bars, predictions, timeout, baseline)
    loading = threading.Thread(target=lambda: asyncio.run(preload(settings, messages, batched=True)),
                               name="bench-preload")
    loading.start()
    try:
        return drain(ws, settings, trades, len(messages), bars, predictions, timeout, baseline)
    finally:
        loading.join()


def counts(ws: list[Worker]) -> dict[str, float]:
    """The workers' counters now (a baseline for the next ``drain``)."""
    samples = [w.metrics(*COUNTS) for w in ws]
    return {k: sum(s.get(k, 0.0) for s in samples) for k in COUNTS}


def bare_faust(settings: Settings, messages: Sequence[tuple[bytes, bytes]], log_dir: Path, timeout: float,
               count: int) -> float:
    """Messages/s of a Faust app that only counts raw messages: the throughput run's messages,
    repeated to ``count`` on a topic of their own, the worker's broker settings."""
    out = log_dir / f"count-{uuid.uuid4().hex[:6]}.json"
    counting = settings.model_copy(update={"app_id": settings.app_id + "-count",
                                           "topic_trades": settings.topic_trades + "-count"})
    asyncio.run(ensure_topics(counting))
    repeated = [messages[i % len(messages)] for i in range(max(count, len(messages)))]
    asyncio.run(preload(counting, repeated, batched=True))
    n = len(repeated)
    env = {**os.environ, **counting.env(), "PYTHONUNBUFFERED": "1"}
    proc = Process("bare-faust", [sys.executable, "-m", "chaincast.deploy.bench", "--count", str(n), "--out", str(out)],
                   env=env, log_path=log_dir / "bare-faust.log").start()
    try:
        deadline = time.monotonic() + timeout
        while not out.exists():
            if time.monotonic() > deadline or not proc.alive():
                raise RuntimeError(f"the bare Faust counter did not finish; see {log_dir}/bare-faust.log")
            time.sleep(POLL_S)
        time.sleep(0.05)  # written in one call; let it land
        result = json.loads(out.read_text())
    finally:
        proc.stop(timeout=10)
    return result["messages"] / max(result["last"] - result["first"], 1e-6)


def count_messages(settings: Settings, expect: int, out: Path) -> None:
    """The bare-Faust counter (runs in its own process): the worker's broker settings, no tables,
    no decoding; writes first/last wall times when ``expect`` messages were seen."""
    import faust

    from chaincast.stream.app import faust_app

    app = faust_app(settings)
    topic = app.topic(settings.topic_trades, key_serializer="raw", value_serializer="raw")
    state = {"n": 0, "first": 0.0}

    @app.agent(topic, name="count")
    async def count(stream):  # noqa: ANN001 - a faust stream
        async for _value in stream:
            state["n"] += 1
            if state["n"] == 1:
                state["first"] = time.perf_counter()
            if state["n"] == expect:
                out.write_text(json.dumps({"messages": expect, "first": state["first"], "last": time.perf_counter()}))

    faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False).execute_from_commandline()

"""`chaincast bench`: throughput and latency of the real system on this machine.

Everything runs on real parts: the embedded broker and Redis (unless
KAFKA_BOOTSTRAP_SERVERS / REDIS_URL point elsewhere), real worker processes
(``chaincast worker``) read through their own metrics endpoints, and real
replayed history (``producers.synth``: a 1-minute bar becomes its 4 trades).

Phases, each on fresh topics and a fresh consumer group:

1. throughput, one worker: the trades topic is pre-loaded with TradeBatch
   messages, then a worker starts; the clock runs from its first processed
   message to the last prediction of the backlog. The worker's RSS is read at
   the end. The same topic is then counted by a bare Faust app (raw messages,
   the worker's broker settings) for the framework's ceiling.
2. latency on that warm worker: each symbol gets the next bar's trades every
   ``LATENCY_INTERVAL_S``; the first trade of a minute closes the previous bar.
   Measured from just before the send to the moment ``XREAD BLOCK`` on the
   Redis history stream returns the forecast of the closed bar: producer,
   broker, bars agent, bars topic, predict agent (inference, Redis pipeline)
   and the Redis notification. Halfway, a second model is announced: swap time.
3. onnxruntime vs torch batch-1 latency per family (``models.bench.latency``).
4. two workers in one group on a pre-loaded topic: rate(2) / rate(1).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import psutil
import redis
import typer
from aiokafka import AIOKafkaProducer

from chaincast.consumers.promotion import announce
from chaincast.consumers.registry import ModelEntry, Registry
from chaincast.deploy.embedded import Process, embedded_stack, free_port
from chaincast.deploy.metrics import scrape
from chaincast.deploy.up import bundled_files, child
from chaincast.models.history import TS, load_many, symbol_of
from chaincast.models.logs import setup_logging
from chaincast.producers.synth import dense_trades
from chaincast.stream.predict import history_size
from chaincast.stream.records import TradeBatch, market_key
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.settings import Settings, load_settings
from chaincast.stream.topics import ensure_topics
from chaincast.stream.topics import renamed

log = logging.getLogger(__name__)

# One symbol per partition of the default 4 (murmur2 of "binance:SYMBOL": DOGE 0, BTC 1, SOL 2, ETH 3),
# so two workers get equal shares; a fifth (ADA) would double partition 0 and skew the scaling figure.
DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT")
TRADES_PER_MESSAGE = 100  # see BENCHMARKS.md: the exchange producer's frames at ~20k trades/s over 4 symbols
TRADES_PER_BAR = 500  # a real minute of BTC or ETH: the exchange export shows medians of 430 to 2,444
LATENCY_INTERVAL_S = 0.2  # per symbol: one bar closes every 200 ms
POLL_S = 0.1  # metrics polls: each costs the worker a scrape (~1% of its CPU at this rate)
CEILING_MESSAGES = 20_000  # the bare-Faust count needs more messages than a throughput run has to be timed
SETTLE_S = 5.0  # fallback: predictions unchanged this long (bars all emitted) = the backlog is done
GOALS = {"trades_per_s_per_worker": 20_000, "bar_to_redis_ms_p50": 3.0, "bar_to_redis_ms_p99": 10.0,
         "two_worker_scaling": 1.8, "worker_rss_mb": 400.0}


@dataclass(frozen=True)
class BenchPlan:
    """Sizes of one bench run; ``for_duration`` scales them to a time budget."""

    bars_per_symbol: int  # replayed per symbol in each throughput run
    latency_s: float
    trades_per_message: int = TRADES_PER_MESSAGE
    trades_per_bar: int = TRADES_PER_BAR
    scaling: bool = True
    families: tuple[str, ...] | None = None  # None: every family
    ort_bars: int = 3000  # bars the quick training of each family sees (latency does not depend on it)

    @classmethod
    def for_duration(cls, seconds: float, scaling: bool = True, trades_per_bar: int = TRADES_PER_BAR) -> "BenchPlan":
        # ~40% of the budget is fixed cost (process starts, group joins, training); the rest is measured:
        # about 5,000 trades per second of budget over the (four) symbols, and never fewer bars than
        # a few windows' worth, so that forecasts are made too.
        bars = int(min(max(seconds * 5_000 / trades_per_bar / 4, 300), 20_000))
        return cls(bars_per_symbol=bars, latency_s=min(max(seconds * 0.08, 4.0), 30.0), scaling=scaling,
                   trades_per_bar=trades_per_bar)


def default_files(symbols: Sequence[str] = DEFAULT_SYMBOLS) -> dict[str, list[Path]]:
    """The bundled week (the only market data a user's install has)."""
    return bundled_files(["BTCUSDT", "ETHUSDT"])


def files_of(paths: Sequence[Path]) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for p in paths:
        if (sym := symbol_of(p)) is None:
            raise ValueError(f"cannot tell the symbol of {p}: name it like BTCUSDT-1m-....csv")
        files.setdefault(sym, []).append(p)
    return files


# ---------------------------------------------------------------- messages


def trade_messages(exchange: str, bars: dict[str, np.ndarray], per_message: int,
                   per_bar: int = TRADES_PER_BAR) -> list[tuple[bytes, bytes]]:
    """(key, TradeBatch) of every bar's synthetic trades (``per_bar`` of them, see
    ``producers.synth.dense_trades``), ``per_message`` consecutive trades of one symbol per
    message, symbols interleaved in event-time order (as a live producer sends them)."""
    chunks: list[tuple[int, str, bytes, bytes]] = []
    for sym, rows in bars.items():
        trades = [t for row in rows for t in dense_trades(exchange, sym, row, per_bar)]
        key = market_key(exchange, sym).encode()
        for i in range(0, len(trades), per_message):
            part = trades[i:i + per_message]
            chunks.append((part[0].ts_event, sym, key,
                           TradeBatch(exchange=exchange, symbol=sym, trades=part).dumps()))
    chunks.sort(key=lambda c: (c[0], c[1]))
    return [(key, value) for _, _, key, value in chunks]


async def preload(settings: Settings, messages: Sequence[tuple[bytes, bytes]], batched: bool = False) -> float:
    """Send everything to the trades topic, wait for every ack; returns the seconds it took.
    ``batched``: many records per batch even on the embedded broker (for topics only counted)."""
    config = {**settings.producer_config(), **({"max_batch_size": 16_384, "linger_ms": 5} if batched else {})}
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                max_request_size=max(settings.max_message_bytes * 2, 1_048_576), **config)
    await producer.start()
    t0 = time.perf_counter()
    try:
        futures = [await producer.send(settings.topic_trades, value, key=key) for key, value in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - t0


# ---------------------------------------------------------------- processes


@dataclass
class Worker:
    proc: Process
    port: int

    def metrics(self) -> dict[str, float]:
        return scrape(self.port, timeout=2.0)

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20


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
    trades_by_worker: list[float] = field(default_factory=list)

    @property
    def trades_per_s(self) -> float:
        return self.trades / self.seconds

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.seconds


def expected_predictions(bars: dict[str, np.ndarray], window: int) -> int:
    """Forecasts the stream makes for these bars: every closed bar (each symbol's last stays open)
    whose window and warm-up are gap-free (``stream.predict.ready``)."""
    from chaincast.models.features import bar_features, valid_windows

    return int(sum(valid_windows(bar_features(rows[:-1]), window).sum() for rows in bars.values()))


def drain(ws: list[Worker], trades: int, messages: int, bars: int, predictions: int, timeout: float) -> Throughput:
    """Poll the workers' metrics until the backlog is through bars -> predict -> Redis: every trade
    folded, every bar emitted and every expected forecast made (or, should the expectation be off,
    no new forecast for SETTLE_S)."""
    t0 = time.perf_counter()
    first = last_change = None
    seen_preds = -1.0
    while True:
        now = time.perf_counter()
        if now - t0 > timeout:
            raise TimeoutError(f"the backlog was not processed within {timeout:.0f}s (last: {totals})")
        for w in ws:
            if not w.proc.alive():
                raise RuntimeError(f"{w.proc.name} exited; see its log")
        samples = [w.metrics() for w in ws]
        totals = {k: sum(s.get(k, 0.0) for s in samples) for k in
                  ("chaincast_trade_messages_total", "chaincast_trades_total", "chaincast_bars_total",
                   "chaincast_predictions_total")}
        if first is None and totals["chaincast_trade_messages_total"] > 0:
            first = now
        if totals["chaincast_predictions_total"] != seen_preds:
            seen_preds, last_change = totals["chaincast_predictions_total"], now
        done = totals["chaincast_trades_total"] >= trades and totals["chaincast_bars_total"] >= bars
        if done and (seen_preds >= predictions or (seen_preds > 0 and now - last_change >= SETTLE_S)):
            assert first is not None and last_change is not None
            return Throughput(len(ws), trades, messages, int(totals["chaincast_bars_total"]), int(seen_preds),
                              seconds=max(last_change - first, 1e-6), startup_s=first - t0,
                              rss_mb=[w.rss_mb() for w in ws],
                              trades_by_worker=[s.get("chaincast_trades_total", 0.0) for s in samples])
        time.sleep(POLL_S)


def bare_faust(settings: Settings, messages: Sequence[tuple[bytes, bytes]], log_dir: Path, timeout: float) -> float:
    """Messages/s of a Faust app that only counts raw messages: the throughput run's messages,
    repeated to CEILING_MESSAGES on a topic of their own, the worker's broker settings."""
    out = log_dir / f"count-{uuid.uuid4().hex[:6]}.json"
    counting = settings.model_copy(update={"app_id": settings.app_id + "-count",
                                           "topic_trades": settings.topic_trades + "-count"})
    asyncio.run(ensure_topics(counting))
    repeated = [messages[i % len(messages)] for i in range(max(CEILING_MESSAGES, len(messages)))]
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


# ---------------------------------------------------------------- latency and model swap


class HistoryReader(threading.Thread):
    """``XREAD BLOCK`` on the Redis history streams; notes when each forecast became visible."""

    def __init__(self, url: str, keys: dict[str, str]) -> None:  # symbol -> history stream key
        super().__init__(daemon=True, name="bench-xread")
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.symbol_of = {key: sym for sym, key in keys.items()}
        self.ids = {key: (self.client.xrevrange(key, count=1) or [("0-0", {})])[0][0] for key in keys.values()}
        self.seen: dict[tuple[str, int], tuple[float, dict[str, str]]] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for key, entries in self.client.xread(self.ids, block=200) or []:
                now = time.perf_counter()
                for entry_id, fields in entries:
                    self.ids[key] = entry_id
                    self.seen[(self.symbol_of[key], int(entry_id.split("-")[0]))] = (now, fields)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=2)
        self.client.close()


@dataclass
class Latency:
    e2e_ms: list[float]
    stage_ms: list[float]  # Prediction.latency_ms: the bar's arrival at the predict agent -> forecast made
    closes_sent: int
    swap_s: float  # announce() called -> the worker loaded the model (its chaincast_model_loaded_timestamp)
    swap_first_prediction_s: float | None  # announce() called -> first forecast of the new version in Redis


async def close_bars(settings: Settings, next_rows: dict[str, np.ndarray], last_ts: dict[str, int],
                     seconds: float, halfway: Callable[[], Any], per_bar: int) -> dict[tuple[str, int], float]:
    """Send each symbol its next bar every LATENCY_INTERVAL_S (staggered across symbols); the bar's
    first trade closes the previous one. Returns (symbol, closed bar ts) -> perf_counter before the send."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, **settings.producer_config())
    await producer.start()
    sent: dict[tuple[str, int], float] = {}
    symbols = list(next_rows)
    step = LATENCY_INTERVAL_S / len(symbols)
    swap = None
    try:
        start = time.perf_counter()
        for k in range(int(seconds / step)):
            sym = symbols[k % len(symbols)]
            i = k // len(symbols)
            if i >= len(next_rows[sym]):
                break
            row = next_rows[sym][i]
            value = TradeBatch(exchange=settings.exchange, symbol=sym,
                               trades=dense_trades(settings.exchange, sym, row, per_bar)).dumps()
            if swap is None and k * step >= seconds / 2:
                swap = asyncio.create_task(halfway())
            await asyncio.sleep(max(start + k * step - time.perf_counter(), 0))
            sent[(sym, last_ts[sym])] = time.perf_counter()
            await producer.send_and_wait(settings.topic_trades, value, key=market_key(settings.exchange, sym).encode())
            last_ts[sym] = int(row[TS])
        if swap is not None:
            await swap
    finally:
        await producer.stop()
    await asyncio.sleep(1.0)  # the last closes reach Redis
    return sent


def measure_latency(settings: Settings, worker: Worker, next_rows: dict[str, np.ndarray], last_ts: dict[str, int],
                    seconds: float, swap_to: ModelEntry, per_bar: int) -> Latency:
    reader = HistoryReader(settings.redis_url or "", {s: RedisLayout.of(settings).history(s) for s in next_rows})
    reader.start()
    before = worker.metrics().get("chaincast_model_loaded_timestamp_seconds", 0.0)
    announced: dict[str, float] = {}

    async def swap() -> None:
        announced["wall"], announced["perf"] = time.time(), time.perf_counter()
        await announce(settings, settings.model_name, swap_to)

    try:
        sent = asyncio.run(close_bars(settings, next_rows, dict(last_ts), seconds, swap, per_bar))
        deadline = time.monotonic() + 30
        while (loaded := worker.metrics().get("chaincast_model_loaded_timestamp_seconds", 0.0)) <= before:
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not load the announced model within 30s")
            time.sleep(POLL_S)
    finally:
        reader.stop()
    warm = min(sent.values()) + 1.0  # the first second warms connections and caches: left out
    e2e, stage, first_new = [], [], None
    for key, t_sent in sent.items():
        if key in reader.seen and t_sent >= warm:
            t_seen, fields = reader.seen[key]
            e2e.append((t_seen - t_sent) * 1000)
            stage.append(float(fields["latency_ms"]))
    for t_seen, fields in reader.seen.values():
        if fields.get("model_version") == swap_to.version and (first_new is None or t_seen < first_new):
            first_new = t_seen
    return Latency(e2e, stage, len(sent), swap_s=loaded - announced["wall"],
                   swap_first_prediction_s=None if first_new is None else first_new - announced["perf"])


# ---------------------------------------------------------------- onnxruntime vs torch


def ort_vs_torch(bars: np.ndarray, window: int, families: Sequence[str] | None) -> dict[str, dict[str, float]]:
    """Median batch-1 latency per family (``models.bench.latency``, one thread each) after a
    20-step training: latency does not depend on the weights."""
    import torch

    from chaincast.models.bench import latency
    from chaincast.models.export import export_onnx
    from chaincast.models.families import FAMILIES
    from chaincast.models.train import FitOptions, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for family in families or FAMILIES:
            result = train([bars], family, window, options=FitOptions(max_epochs=1, max_steps_per_epoch=20))
            times = latency(result.module, export_onnx(result.module, result.card), result.test.x[-1:], repeats=200)
            out[family] = {**times, "speedup": times["torch_ms"] / times["onnx_ms"]}
    finally:
        torch.set_num_threads(threads)
    return out


# ---------------------------------------------------------------- the run


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile(list(range(1, 101)), 99)
    (2.0, 99)
    """
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


def run_settings(base: Settings, run: str, symbols: Sequence[str], home: Path) -> Settings:
    """Fresh topics, consumer group and Redis prefix for one run, so runs never see each other."""
    suffix = f"bench-{run}"
    return base.model_copy(update={
        "app_id": f"chaincast-{suffix}", "redis_prefix": f"{suffix}:", "home": home, "symbols": list(symbols),
        **renamed(base, suffix),
    })


def code_version() -> dict[str, Any]:
    """The commit measured and whether the hot path had uncommitted changes (read-only git calls)."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain", "--", "stream", "producers", "consumers",
                                        "models").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_hot_path_files": changed}


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def run_bench(base: Settings, plan: BenchPlan, files: dict[str, list[Path]], log_dir: Path,
              echo: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    symbols = list(files)
    bars = {s: load_many(p) for s, p in files.items()}
    short = [s for s, b in bars.items() if len(b) < plan.bars_per_symbol + history_size(base.window) + 100]
    if short:
        raise ValueError(f"not enough history for {', '.join(short)}: need {plan.bars_per_symbol} bars and more")
    head = {s: b[:plan.bars_per_symbol] for s, b in bars.items()}
    messages = trade_messages(base.exchange, head, plan.trades_per_message, plan.trades_per_bar)
    n_trades = plan.trades_per_bar * plan.bars_per_symbol * len(symbols)
    n_bars = (plan.bars_per_symbol - 1) * len(symbols)  # each symbol's last bar stays open
    n_preds = expected_predictions(head, base.window)
    tag = uuid.uuid4().hex[:6]
    with ExitStack() as stack:
        want_broker, want_redis = base.kafka_bootstrap_servers is None, base.redis_url is None
        env = stack.enter_context(embedded_stack(log_dir, broker=want_broker, redis=want_redis))
        if want_broker:
            base = base.model_copy(update={"kafka_bootstrap_servers": env["KAFKA_BOOTSTRAP_SERVERS"],
                                           "embedded_broker": True})
        if want_redis:
            base = base.model_copy(update={"redis_url": env["REDIS_URL"]})
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaincast-bench-")))
        registry = Registry(home / "registry")
        first = next(iter(bars.values()))
        from chaincast.models.build import build_model  # torch, only when the bench runs (not for --help)

        serving = build_model([first[:3000]], "persistence", base.window, base.horizon, registry, name=base.model_name)
        swap_to = build_model([first[3000:6000]], "persistence", base.window, base.horizon, registry,
                              name=base.model_name)
        if swap_to.version == serving.version:  # the same weights: a linear model then
            swap_to = build_model([first[:3000]], "linear", base.window, base.horizon, registry,
                                  name=base.model_name)
        echo(f"{len(messages)} messages of {plan.trades_per_message} trades ({n_trades} trades, "
             f"{plan.trades_per_bar} per bar, "
             f"{len(symbols)} symbols: {', '.join(symbols)})")

        def prepared(run: str) -> Settings:
            s = run_settings(base, f"{tag}-{run}", symbols, home)
            asyncio.run(ensure_topics(s))
            asyncio.run(announce(s, s.model_name, serving))
            preload_s = asyncio.run(preload(s, messages))
            echo(f"[{run}] pre-loaded the trades topic in {preload_s:.1f}s ({len(messages) / preload_s:.0f} msg/s)")
            return s

        timeout = 150.0
        one = prepared("one")
        with workers(one, 1, log_dir) as (worker,):
            tput = drain([worker], n_trades, len(messages), n_bars, n_preds, timeout)
            echo(f"[one] {tput.trades_per_s:,.0f} trades/s ({tput.messages_per_s:,.0f} msg/s) over "
                 f"{tput.seconds:.1f}s; RSS {tput.rss_mb[0]:.0f} MB")
            tail = {s: b[plan.bars_per_symbol:] for s, b in bars.items()}
            last_ts = {s: int(b[plan.bars_per_symbol - 1, TS]) for s, b in bars.items()}
            lat = measure_latency(one, worker, tail, last_ts, plan.latency_s, swap_to, plan.trades_per_bar)
            echo(f"[latency] {len(lat.e2e_ms)} closes: p50 {percentile(lat.e2e_ms, 50):.1f} ms, "
                 f"p99 {percentile(lat.e2e_ms, 99):.1f} ms; swap {lat.swap_s:.2f}s")
        ceiling = bare_faust(one, messages, log_dir, timeout)
        echo(f"[bare faust] {ceiling:,.0f} msg/s")
        ort = ort_vs_torch(first[:plan.ort_bars], base.window, plan.families)
        echo("[onnx] " + ", ".join(f"{f} x{r['speedup']:.1f}" for f, r in ort.items()))
        two = None
        if plan.scaling:
            pair = prepared("two")
            with workers(pair, 2, log_dir) as ws:
                two = drain(ws, n_trades, len(messages), n_bars, n_preds, timeout)
            echo(f"[two] {two.trades_per_s:,.0f} trades/s, by worker {[int(t) for t in two.trades_by_worker]}")
    return {
        "trades_per_s_per_worker": tput.trades_per_s,
        "messages_per_s": tput.messages_per_s,
        "bars_per_s": tput.bars / tput.seconds,
        "predictions_per_s": tput.predictions / tput.seconds,
        "bare_faust_msgs_per_s": ceiling,
        "bar_to_redis_ms_p50": percentile(lat.e2e_ms, 50),
        "bar_to_redis_ms_p99": percentile(lat.e2e_ms, 99),
        "bar_to_redis_samples": len(lat.e2e_ms),
        "predict_stage_ms_p50": percentile(lat.stage_ms, 50),
        "predict_stage_ms_p99": percentile(lat.stage_ms, 99),
        "ort_speedup_vs_torch": {f: r["speedup"] for f, r in ort.items()},
        "ort_latency_ms": {f: {"torch": r["torch_ms"], "onnxruntime": r["onnx_ms"]} for f, r in ort.items()},
        "swap_s": lat.swap_s,
        "swap_to_first_prediction_s": lat.swap_first_prediction_s,
        "worker_rss_mb": tput.rss_mb[0],
        "two_worker_scaling": None if two is None else two.trades_per_s / tput.trades_per_s,
        "two_worker_trades_per_s": None if two is None else two.trades_per_s,
        "two_worker_split": None if two is None else two.trades_by_worker,
        "throughput_run": {k: v for k, v in asdict(tput).items() if k != "trades_by_worker"},
        "machine": machine(),
        "code": code_version(),
        "settings": {"symbols": symbols, "files": {s: [str(p) for p in ps] for s, ps in files.items()},
                     "bars_per_symbol": plan.bars_per_symbol, "trades_per_message": plan.trades_per_message,
                     "trades_per_bar": plan.trades_per_bar,
                     "latency_s": plan.latency_s, "latency_interval_s": LATENCY_INTERVAL_S,
                     "partitions": base.partitions, "window": base.window,
                     "broker": "embedded tansu" if base.embedded_broker else "external",
                     "redis": "embedded" if want_redis else "external", "model": serving.card["family"],
                     "swap_to": swap_to.card["family"], "onnx_threads": base.onnx_threads},
        "goals": GOALS,
        "elapsed_s": time.perf_counter() - started,
    }


def table(result: dict[str, Any]) -> str:
    """The readable summary printed at the end."""
    def fmt(value: Any, unit: str = "") -> str:
        if value is None:
            return "-"
        return f"{value:,.2f}{unit}" if isinstance(value, float) and value < 100 else f"{value:,.0f}{unit}"

    s = result["settings"]
    rows = [
        ("trades/s, one worker", fmt(result["trades_per_s_per_worker"]), ">= 20,000"),
        (f"messages/s ({s['trades_per_message']} trades each)", fmt(result["messages_per_s"]), ""),
        ("bare Faust ceiling, msg/s", fmt(result["bare_faust_msgs_per_s"]), ""),
        ("bar close -> Redis p50", fmt(result["bar_to_redis_ms_p50"], " ms"), "<= 3 ms"),
        ("bar close -> Redis p99", fmt(result["bar_to_redis_ms_p99"], " ms"), "<= 10 ms"),
        ("  of which predict stage p50 / p99",
         f"{fmt(result['predict_stage_ms_p50'])} / {fmt(result['predict_stage_ms_p99'], ' ms')}", ""),
        ("model swap (announce -> loaded)", fmt(result["swap_s"], " s"), ""),
        ("worker RSS", fmt(result["worker_rss_mb"], " MB"), "<= 400 MB"),
        ("two workers / one", fmt(result["two_worker_scaling"], "x"), ">= 1.8x"),
    ]
    rows += [(f"onnxruntime vs torch, {f}", f"x{v:.1f}", "") for f, v in result["ort_speedup_vs_torch"].items()]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value:>14}  {goal}" for name, value, goal in rows)


def bench(
    duration: Annotated[float, typer.Option(help="Time budget in seconds; sizes scale with it.", min=30, max=600)]
    = 200.0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON here.")] = None,
    data: Annotated[Optional[list[Path]], typer.Option("--data", help="History file(s); repeat the option.")] = None,
    workers_scaling: Annotated[bool, typer.Option(help="Also measure two workers against one.")] = True,
    trades_per_bar: Annotated[int, typer.Option(help="Synthetic trades per 1-minute bar (real BTC/ETH minutes: "
                                                     "430 to 2,444).", min=4, max=10_000)] = TRADES_PER_BAR,
) -> None:
    """Measure throughput, latency, model swap, RSS and scaling of the real system."""
    from chaincast.deploy.cli_args import check_files, load_settings

    settings = load_settings()
    try:
        files = files_of(check_files(data)) if data else default_files()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if json_out is not None and not json_out.parent.is_dir():
        raise typer.BadParameter(f"no such directory for --json: {json_out.parent}")
    log_dir = settings.home / "logs" / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = run_bench(settings, BenchPlan.for_duration(duration, workers_scaling, trades_per_bar), files,
                           log_dir, typer.echo)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo("\n" + table(result))
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        typer.echo(f"wrote {json_out}")


def main() -> None:
    """The bare-Faust counter process: ``python -m chaincast.deploy.bench --count N --out FILE``."""
    if len(sys.argv) != 5 or sys.argv[1] != "--count" or sys.argv[3] != "--out":
        sys.exit("usage: python -m chaincast.deploy.bench --count N --out FILE (started by `chaincast bench`)")
    setup_logging()
    count_messages(load_settings(), int(sys.argv[2]), Path(sys.argv[4]))


if __name__ == "__main__":
    main()

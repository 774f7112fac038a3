"""One bench run, phase by phase, each on fresh topics and a fresh consumer group.

1. throughput, one worker: the backlog is loaded on the topic first (as for the
   peer), then the worker starts; the clock runs from its first processed
   message to the last forecast of the backlog; RSS and CPU seconds are read at
   the end;
2. latency on that warm worker once it is quiet (``latency``); halfway, a second
   model is announced: swap time;
3. the bare-Faust ceiling (raw messages counted, the worker's broker settings);
4. onnxruntime vs torch batch-1 latency per family (``models.bench.latency``);
5. one worker, then two workers in one group, with the backlog loaded while they
   run (``harness.timed_backlog``: so that both are in the group before the first
   message): CPU per trade of two against one, and each worker's partitions;
6. the symbol scan (``scan``);
7. the peer (``peer``) on the same backlog and the same timed closes;
8. the latency floor (``floor``): the same timed closes through bare relays
   (aiokafka, Faust) that only find the close and append it to Redis.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from chaincast.consumers.promotion import announce
from chaincast.consumers.registry import Registry
from chaincast.deploy.bench.harness import (
    POLL_S,
    Worker,
    bare_faust,
    broker_name,
    preload,
    run_settings,
    settle_workers,
    timed_backlog,
    workers,
)
from chaincast.deploy.bench.floor import RELAYS, run_floor
from chaincast.deploy.bench.floor import summary as floor_summary
from chaincast.deploy.bench.latency import Latency, measure, percentile
from chaincast.deploy.bench.peer import ratios, run_peer
from chaincast.deploy.bench.plan import GOALS, BenchPlan, closes, derive_markets, expected_predictions, trade_messages
from chaincast.deploy.bench.profile import profile_forecasts
from chaincast.deploy.bench.report import code_version, machine
from chaincast.deploy.bench.scan import scan_summary, symbol_scan
from chaincast.deploy.embedded import embedded_stack
from chaincast.models.history import TS, load_many
from chaincast.stream import kafka_options
from chaincast.stream.settings import Settings
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.topics import ensure_topics

log = logging.getLogger(__name__)
TIMEOUT_S = 600.0
SWAP_WAIT_S = 30.0
LOADED = "chaincast_model_loaded_timestamp_seconds"  # the worker's gauge of its serving model


def ort_vs_torch(bars: np.ndarray, window: int, families: Sequence[str] | None) -> dict[str, dict[str, float]]:
    """Median batch-1 latency per torch family (``models.bench.latency``, one thread each) after a
    20-step training: latency does not depend on the weights. Families that are not torch
    modules (lightgbm) have no eager twin and are left out."""
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
            if not isinstance(result.module, torch.nn.Module):  # lightgbm: trees, no torch twin to compare with
                continue
            times = latency(result.module, export_onnx(result.module, result.card), result.test.x[-1:], repeats=200)
            out[family] = {**times, "speedup": times["torch_ms"] / times["onnx_ms"]}
    finally:
        torch.set_num_threads(threads)
    return out


def start_kafka(stack: ExitStack, log_dir: Path) -> str:
    """Apache Kafka, one KRaft node (deploy/kafka), for the length of the run; its bootstrap address."""
    try:
        from chaincast.deploy.kafka import kafka_cluster
    except ImportError:
        raise ValueError("--kafka needs the Apache Kafka helper (chaincast.deploy.kafka) and its jars: "
                         "bash deploy/install-test-deps.sh") from None
    log_dir.mkdir(parents=True, exist_ok=True)
    cluster = stack.enter_context(kafka_cluster(Path(stack.enter_context(
        tempfile.TemporaryDirectory(prefix="kafka-", dir=log_dir))), nodes=1))
    return cluster.bootstrap


def stack_settings(stack: ExitStack, base: Settings, log_dir: Path, kafka: bool) -> tuple[Settings, str, Path]:
    """The broker and Redis of a run, entered on ``stack``: what ``base`` points at, else Apache Kafka
    started for the run (``kafka``), else the embedded Tansu; Redis likewise. Returns the settings
    pointing at them, the broker's name for the results, and a fresh home directory."""
    want_broker, want_redis = base.kafka_bootstrap_servers is None, base.redis_url is None
    started_kafka = want_broker and kafka
    if started_kafka:
        base = base.model_copy(update={"kafka_bootstrap_servers": start_kafka(stack, log_dir), "embedded_broker": False})
        want_broker = False
    env = stack.enter_context(embedded_stack(log_dir, broker=want_broker, redis=want_redis))
    if want_broker:
        base = base.model_copy(update={"kafka_bootstrap_servers": env["KAFKA_BOOTSTRAP_SERVERS"],
                                       "embedded_broker": True})
    if want_redis:
        base = base.model_copy(update={"redis_url": env["REDIS_URL"]})
    broker = broker_name(base) + (" (Apache Kafka, one KRaft node started for the run)" if started_kafka else "")
    home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaincast-bench-")))
    return base, broker, home


def stage_means(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean ms per forecasting batch of each stage between two reads of the worker's stage histogram.

    >>> stage_means({"fold": (1.0, 10)}, {"fold": (1.5, 20), "redis": (0.2, 10)})
    {'fold': 50.0, 'redis': 20.0}
    """
    out = {}
    for stage, (total, count) in after.items():
        total0, count0 = before.get(stage, (0.0, 0.0))
        if count > count0:
            out[stage] = (total - total0) / (count - count0) * 1000
    return out


def latency_with_swap(settings: Settings, worker: Worker, timed: Sequence, per_s: float,
                      swap_to: Any) -> tuple[Latency, float | None, float | None]:
    """Timed closes on the warm worker; halfway a second model is announced. Returns the latency,
    announce -> loaded (the worker's gauge; None if it never loaded it, logged) and announce ->
    first forecast of the new version."""
    before = worker.metrics(LOADED).get(LOADED, 0.0)
    stages = worker.stages()
    announced: dict[str, float] = {}

    async def swap() -> None:
        announced["wall"], announced["perf"] = time.time(), time.perf_counter()
        await announce(settings, settings.model_name, swap_to)

    layout = RedisLayout.of(settings)
    lat = measure(settings, {s: layout.history(s) for s in settings.symbols}, timed, per_s, halfway=swap)
    lat.stages_ms = stage_means(stages, worker.stages())
    deadline = time.monotonic() + SWAP_WAIT_S
    while (loaded := worker.metrics(LOADED).get(LOADED, 0.0)) <= before:
        if time.monotonic() > deadline:
            log.error("the worker did not load the announced model within %.0fs: swap_s is null", SWAP_WAIT_S)
            break
        time.sleep(POLL_S)
    new = [t for t, fields in lat.seen.values() if fields.get("model_version") == swap_to.version]
    return (lat, loaded - announced["wall"] if loaded > before else None,
            (min(new) - announced["perf"]) if new else None)


def run_bench(base: Settings, plan: BenchPlan, files: dict[str, list[Path]], log_dir: Path,
              echo: Callable[[str], None], profile_out: Path | None = None, kafka: bool = False) -> dict[str, Any]:
    """Every phase on one broker: the one in ``base`` (KAFKA_BOOTSTRAP_SERVERS), else Apache Kafka
    started for the run (``kafka``: one KRaft node from deploy/kafka), else the embedded Tansu."""
    started = time.perf_counter()
    code = code_version()  # at the start: the code the workers run
    bars = {s: load_many(p) for s, p in files.items()}
    length = plan.bars_per_market + plan.latency_bars(plan.markets)
    markets = derive_markets(bars, plan.markets, length, base.exchange, base.partitions,
                             balanced=plan.markets % base.partitions == 0)
    symbols = list(markets)
    head = {s: rows[:plan.bars_per_market] for s, rows in markets.items()}
    messages = trade_messages(base.exchange, head, plan.trades_per_message, plan.trades_per_bar)
    n_trades = plan.trades_per_bar * plan.bars_per_market * len(symbols)
    n_bars = (plan.bars_per_market - 1) * len(symbols)  # each market's last bar stays open
    n_preds = expected_predictions(head, base.window)
    timed = closes(base.exchange, {s: rows[plan.bars_per_market:] for s, rows in markets.items()},
                   {s: int(rows[plan.bars_per_market - 1, TS]) for s, rows in markets.items()},
                   plan.latency_closes, plan.trades_per_bar)
    tag = uuid.uuid4().hex[:6]
    want_redis = base.redis_url is None
    with ExitStack() as stack:
        base, broker, home = stack_settings(stack, base, log_dir, kafka)
        registry = Registry(home / "registry")
        first = next(iter(bars.values()))
        from chaincast.models.build import build_model  # torch, only when the bench runs (not for --help)

        serving = build_model([first[:3000]], "persistence", base.window, base.horizon, registry, name=base.model_name)
        swap_to = build_model([first[3000:6000]], "persistence", base.window, base.horizon, registry,
                              name=base.model_name)
        if swap_to.version == serving.version:  # the same weights: a linear model then
            swap_to = build_model([first[:3000]], "linear", base.window, base.horizon, registry, name=base.model_name)
        echo(f"broker: {broker}; {len(messages)} messages of {plan.trades_per_message} trades ({n_trades} trades, "
             f"{plan.trades_per_bar} per bar, {len(symbols)} markets: {', '.join(symbols)})")

        def prepared(run: str) -> Settings:
            s = run_settings(base, f"{tag}-{run}", symbols, home)
            asyncio.run(ensure_topics(s))
            asyncio.run(announce(s, s.model_name, serving))
            return s

        one = prepared("one")
        asyncio.run(preload(one, messages, batched=True))  # before the worker starts, as for the peer
        with workers(one, 1, log_dir) as (worker,):
            tput = timed_backlog([worker], one, messages, n_trades, n_bars, n_preds, TIMEOUT_S, preloaded=True)
            echo(f"[one] {tput.trades_per_s:,.0f} trades/s ({tput.messages_per_s:,.0f} msg/s) over "
                 f"{tput.seconds:.1f}s; RSS {tput.rss_mb[0]:.0f} MB; {tput.cpu_s_per_million_trades:.1f} CPU s/M trades")
            settled = settle_workers([worker])  # the backlog's write behind and scoring are not the closes'
            lat, swap_s, swap_first = latency_with_swap(one, worker, timed, plan.closes_per_s, swap_to)
            echo(f"[latency] {len(lat.e2e_ms)} closes: p50 {lat.p50:.1f} ms, p99 {lat.p99:.1f} ms; swap {swap_s} s")
        ceiling = bare_faust(one, messages, log_dir, TIMEOUT_S, plan.ceiling_messages)
        echo(f"[bare faust] {ceiling:,.0f} msg/s")
        ort = ort_vs_torch(first[:plan.ort_bars], base.window, plan.families)
        echo("[onnx] " + ", ".join(f"{f} x{r['speedup']:.1f}" for f, r in ort.items()))
        two = loading = None
        if plan.scaling:  # one worker against two, both with the backlog loaded alongside (see timed_backlog)
            alone = prepared("one-loading")
            with workers(alone, 1, log_dir) as ws:
                loading = timed_backlog(ws, alone, messages, n_trades, n_bars, n_preds, TIMEOUT_S)
            echo(f"[one, loaded alongside] {loading.trades_per_s:,.0f} trades/s, "
                 f"{loading.cpu_s_per_million_trades:.1f} CPU s/M trades")
            pair = prepared("two")
            with workers(pair, 2, log_dir) as ws:
                two = timed_backlog(ws, pair, messages, n_trades, n_bars, n_preds, TIMEOUT_S)
            echo(f"[two] {two.trades_per_s:,.0f} trades/s, {two.cpu_s_per_million_trades:.1f} CPU s/M trades; "
                 f"partitions {two.partitions_by_worker}, trades {[int(t) for t in two.trades_by_worker]}")
        scan = symbol_scan(base, tag, bars, plan, home, log_dir, serving, echo) if plan.scan_sizes else []
        peer = None
        if plan.peer:
            peer = run_peer(run_settings(base, f"{tag}-peer", symbols, home), messages, n_trades, n_bars, symbols, timed, plan.closes_per_s,
                            log_dir, TIMEOUT_S)
            echo(f"[peer] {peer.trades_per_s:,.0f} trades/s; p99 "
                 f"{peer.latency.p99 if peer.latency else float('nan'):.1f} ms")
        floor = {}
        if plan.floor:
            for relay in RELAYS:
                floor[relay] = floor_summary(relay, run_floor(run_settings(base, f"{tag}-floor", symbols, home), relay,
                                                              symbols, timed, plan.closes_per_s, log_dir))
                echo(f"[floor {relay}] p50 {floor[relay]['bar_to_redis_ms_p50']:.1f} ms, "
                     f"p99 {floor[relay]['bar_to_redis_ms_p99']:.1f} ms")
        profile = None
        if profile_out is not None:
            profile = profile_forecasts(base, f"{tag}-profile", markets, plan, home, log_dir, serving, profile_out)
            echo("[profile] CPU ms per forecast: " + ", ".join(f"{k} {v:.3f}" for k, v in profile["ms_per_forecast"].items()))
    mine = {"trades_per_s": tput.trades_per_s, "cpu_s_per_million_trades": tput.cpu_s_per_million_trades,
            "p50_ms": lat.p50, "p99_ms": lat.p99}
    return {
        "broker": broker,
        "trades_per_s_per_worker": tput.trades_per_s,
        "messages_per_s": tput.messages_per_s,
        "bars_per_s": tput.bars / tput.seconds,
        "predictions_per_s": tput.predictions / tput.seconds,
        "bare_faust_msgs_per_s": ceiling,
        "bar_to_redis_ms_p50": lat.p50,
        "bar_to_redis_ms_p99": lat.p99,
        "bar_to_redis_samples": len(lat.e2e_ms),
        "bar_to_redis_missing": lat.closes_sent - len(lat.e2e_ms),
        "producer_ack_ms_p50": percentile(lat.ack_ms, 50),
        "predict_stage_ms_p50": percentile(lat.stage_ms, 50) if lat.stage_ms else None,
        "predict_stage_ms_p99": percentile(lat.stage_ms, 99) if lat.stage_ms else None,
        "forecast_stages_ms_mean": lat.stages_ms,
        "ort_speedup_vs_torch": {f: r["speedup"] for f, r in ort.items()},
        "ort_latency_ms": {f: {"torch": r["torch_ms"], "onnxruntime": r["onnx_ms"]} for f, r in ort.items()},
        "swap_s": swap_s,
        "latency_settle_s": settled,
        "swap_to_first_prediction_s": swap_first,
        "worker_rss_mb": tput.rss_mb[0],
        "worker_cpu_s_per_million_trades": {
            "one": tput.cpu_s_per_million_trades,
            "one_loaded_alongside": None if loading is None else loading.cpu_s_per_million_trades,
            "two": None if two is None else two.cpu_s_per_million_trades},
        # Two workers against one on the same footing: the backlog loaded while they run.
        "worker_cpu_efficiency_2v1": None if two is None or loading is None else
        loading.cpu_s_per_million_trades / two.cpu_s_per_million_trades,
        "two_worker_scaling": None if two is None or loading is None else two.trades_per_s / loading.trades_per_s,
        "one_worker_loaded_alongside_trades_per_s": None if loading is None else loading.trades_per_s,
        "two_worker_trades_per_s": None if two is None else two.trades_per_s,
        "two_worker_split": None if two is None else two.trades_by_worker,
        "two_worker_partitions": None if two is None else two.shares(),
        "symbols_scan": scan,
        "symbols_scan_summary": scan_summary(scan),
        "peer": None if peer is None else peer.summary(),
        "ratio_vs_peer": None if peer is None else ratios(mine, peer),
        "floor": floor or None,
        "profile": profile,
        "throughput_run": {k: v for k, v in asdict(tput).items() if k not in ("trades_by_worker", "partitions_by_worker")},
        "machine": machine(),
        "code": code,
        "settings": {"markets": symbols, "files": {s: [str(p) for p in ps] for s, ps in files.items()},
                     "bars_per_market": plan.bars_per_market, "trades_per_message": plan.trades_per_message,
                     "trades_per_bar": plan.trades_per_bar, "latency_closes": plan.latency_closes,
                     "closes_per_s": plan.closes_per_s, "scan_sizes": list(plan.scan_sizes),
                     "scan_trades": plan.scan_trades, "scan_closes": plan.scan_closes,
                     "partitions": base.partitions, "window": base.window,
                     "redis": "embedded" if want_redis else "external", "model": serving.card["family"],
                     "swap_to": swap_to.card["family"], "onnx_threads": base.onnx_threads,
                     # the broker profile the clients ran with (stream.kafka_options)
                     "kafka_linger_ms": 0 if base.embedded_broker else kafka_options.linger_ms(base),
                     "fetch_max_wait_ms": kafka_options.fetch_max_wait_ms(base)},
        "goals": GOALS,
        "elapsed_s": time.perf_counter() - started,
    }

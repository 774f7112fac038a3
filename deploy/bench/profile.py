"""Where a forecast's milliseconds go: one worker under cProfile through timed bar closes.

The worker runs as ``python -m cProfile -o FILE -m chaincast.deploy.cli worker``
(cProfile writes when the worker exits on SIGTERM). Every market's window is
filled first (4-trade bars), then timed closes are sent exactly as in the
latency phase (the closing trade alone, the rest of the minute's trades half a
step later), only slower (PROFILE_CLOSES_PER_S). The profile's cumulative times of the functions that do each
stage, divided by the forecasts made, give the worker's CPU milliseconds per
forecast by stage; cProfile sees only the worker's main thread (the event
loop: everything chaincast does), not the Kafka client's fetch thread. The
producer's share is timed outside (send -> broker acknowledgement); what
remains of the end-to-end time is waiting: the broker's fetch, the event loop,
the Redis notification. cProfile slows the worker down (absolute figures are
inflated); the shares are what to read.
"""

from __future__ import annotations

import asyncio
import os
import pstats
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from chaincast.consumers.promotion import announce
from chaincast.consumers.registry import ModelEntry
from chaincast.deploy.bench.harness import Worker, counts, drain, preload, run_settings
from chaincast.deploy.bench.latency import measure, percentile
from chaincast.deploy.bench.plan import BenchPlan, closes, expected_predictions, warmup_messages
from chaincast.deploy.embedded import Process, free_port
from chaincast.models.history import TS
from chaincast.stream.predict import history_size
from chaincast.stream.settings import Settings
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.topics import ensure_topics

PROFILE_CLOSES = 150
PROFILE_CLOSES_PER_S = 5.0  # slow enough for a worker slowed down by cProfile to keep up
TIMEOUT_S = 600.0

# stage -> alternatives; an alternative is the functions (path suffix, name) whose cumulative
# times add up to the stage. Where one alternative nests in another (the markets agent's fold
# calls the bar builder's add), the largest is taken, so the code before and after the one-hop
# change is read by the same table.
STAGES: dict[str, tuple[tuple[tuple[str, str], ...], ...]] = {
    "decode (parse_trades)": ((("stream/bars.py", "parse_trades"),),),
    "bar fold": ((("stream/market.py", "fold"),), (("stream/bars.py", "add"),)),
    "window (push, ready)": ((("stream/predict.py", "push"), ("stream/predict.py", "ready")),),
    "inference (forecast)": ((("stream/predict.py", "forecast"),),),
    "Redis write (sink)": ((("stream/sink.py", "write"),),),
    "topic sends (bars, predictions)": ((("faust/topics.py", "send"),),),
    "table writes (changelog)": ((("faust/tables/table.py", "on_key_set"),),),
    "Kafka produce requests (sender task, outside the agents)": ((("aiokafka/client.py", "send"),),),
    "Bar/Prediction records (pydantic)": ((("stream/records.py", "dumps"), ("stream/records.py", "loads")),),
}
AGENT_BODIES = ((("stream/agents/markets.py", "markets"),),
                (("stream/agents/bars.py", "bars"), ("stream/agents/predict.py", "predict")))


def cumulative(stats: pstats.Stats, functions: tuple[tuple[str, str], ...]) -> float:
    """Seconds: the sum of the cumulative times of these functions (every definition that matches)."""
    total = 0.0
    for (path, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if any(path.endswith(suffix) and name == fn for suffix, fn in functions):
            total += ct
    return total


def stages(profile: Path, forecasts: int) -> dict[str, Any]:
    """Milliseconds of worker CPU per forecast by stage, and the agents' total."""
    stats = pstats.Stats(str(profile))
    per = 1000 / max(forecasts, 1)
    out = {name: max(cumulative(stats, alt) for alt in alternatives) * per for name, alternatives in STAGES.items()}
    agents = max(cumulative(stats, alt) for alt in AGENT_BODIES) * per
    return {"ms_per_forecast": out, "agents_ms_per_forecast": agents,
            "profiled_main_thread_s": stats.total_tt}  # type: ignore[attr-defined]


def profiled_worker(settings: Settings, log_dir: Path, out: Path) -> Worker:
    port = free_port()
    env = {**os.environ, **settings.env(), "CHAINCAST_METRICS_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "chaincast.deploy.cli", "worker"]
    return Worker(Process("worker-profiled", argv, env=env, log_path=log_dir / "worker-profiled.log").start(), port)


def profile_forecasts(base: Settings, run: str, markets: Mapping[str, np.ndarray], plan: BenchPlan, home: Path,
                      log_dir: Path, serving: ModelEntry, out: Path, n_closes: int = PROFILE_CLOSES) -> dict[str, Any]:
    """Fill every market's window, then time ``n_closes`` closes on a profiled worker."""
    w = history_size(base.window) + 1
    s = run_settings(base, run, list(markets), home)
    asyncio.run(ensure_topics(s))
    asyncio.run(announce(s, s.model_name, serving))
    warm = warmup_messages(s.exchange, {m: rows[:w] for m, rows in markets.items()}, plan.trades_per_bar)
    timed = closes(s.exchange, {m: rows[w:] for m, rows in markets.items()},
                   {m: int(rows[w - 1, TS]) for m, rows in markets.items()}, n_closes, plan.trades_per_bar)
    worker = profiled_worker(s, log_dir, out)
    try:
        worker.wait_for("chaincast_model_loaded_timestamp_seconds", TIMEOUT_S)
        asyncio.run(preload(s, warm))
        drain([worker], s, 4 * w * len(markets), len(warm), (w - 1) * len(markets),
              expected_predictions({m: rows[:w] for m, rows in markets.items()}, s.window), TIMEOUT_S)
        layout = RedisLayout.of(s)
        lat = measure(s, {m: layout.history(m) for m in markets}, timed, PROFILE_CLOSES_PER_S)
        forecasts = int(counts([worker])["chaincast_predictions_total"])
    finally:
        worker.proc.stop(timeout=30)
    deadline = time.monotonic() + 30
    while not out.exists() or out.stat().st_size == 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the profiled worker wrote no profile; see {log_dir}/worker-profiled.log")
        time.sleep(0.1)
    result = stages(out, forecasts)
    return {**result, "forecasts": forecasts, "closes": len(lat.e2e_ms), "e2e_ms_p50": lat.p50,
            "e2e_ms_p99": lat.p99, "producer_ack_ms_p50": percentile(lat.ack_ms, 50), "profile": str(out),
            "trades_per_bar": plan.trades_per_bar}


def breakdown_table(profile: Mapping[str, Any]) -> str:
    """The profile as a Markdown table (printed and pasted into BENCHMARKS.md as is)."""
    rows = [("producer send -> broker ack (p50, outside)", profile["producer_ack_ms_p50"])]
    rows += [(f"worker CPU: {name}", ms) for name, ms in profile["ms_per_forecast"].items()]
    rows += [("worker CPU: the agents in all (incl. the above, Faust's own work)", profile["agents_ms_per_forecast"]),
             ("end to end p50 (profiled worker)", profile["e2e_ms_p50"])]
    return "| where | ms per forecast |\n|---|---:|" + "".join(f"\n| {name} | {ms:.3f} |" for name, ms in rows)

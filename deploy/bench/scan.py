"""Cost versus the number of markets: the symbol scan.

For each size (4, 64, 512 markets by default) a fresh worker on fresh topics:

1. idle: the worker is up and serving a model; its RSS is the baseline;
2. warm-up: every market gets enough 4-trade bars to fill its forecast window, a minute
   per message, markets interleaved
   (the state a market costs), then the first trade of the next minute;
3. throughput: a backlog of trades at each market's own realistic rate
   (5-40 trades/s spread over the markets, one message per market per 20 ms
   frame, so one trade per message, as the exchange producer frames them) is
   pre-loaded while the worker runs (batched records: faster than the worker
   reads) and timed from its first message to its last trade folded;
4. latency: timed bar closes (the closing trades alone), markets round robin;
5. RSS at the end; per market = (end - idle) / markets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from chaincast.consumers.promotion import announce
from chaincast.consumers.registry import ModelEntry
from chaincast.deploy.bench.harness import (
    WORKER_START_S,
    counts,
    drain,
    preload,
    run_settings,
    settle_workers,
    timed_backlog,
    workers,
)
from chaincast.deploy.bench.latency import measure
from chaincast.deploy.bench.plan import BenchPlan, expected_predictions, scan_traffic
from chaincast.stream.predict import history_size
from chaincast.stream.settings import Settings
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.topics import ensure_topics

TIMEOUT_S = 600.0


def scan_size(base: Settings, run: str, bars: Mapping[str, np.ndarray], n: int, plan: BenchPlan, home: Path,
              log_dir: Path, serving: ModelEntry) -> dict[str, Any]:
    warmup_bars = history_size(base.window) + 1
    traffic = scan_traffic(base.exchange, bars, n, warmup_bars, plan.scan_trades, plan.scan_closes, base.partitions)
    s = run_settings(base, run, list(traffic.markets), home)
    asyncio.run(ensure_topics(s))
    asyncio.run(announce(s, s.model_name, serving))
    warm_trades = sum(warmup_bars * 4 + 1 for _ in traffic.markets)
    warm_preds = expected_predictions({m: rows[:warmup_bars + 1] for m, rows in traffic.markets.items()}, s.window)
    with workers(s, 1, log_dir) as (worker,):
        worker.wait_for("chaincast_model_loaded_timestamp_seconds", WORKER_START_S)  # up and serving
        idle_rss = worker.rss_mb()
        asyncio.run(preload(s, traffic.warmup))
        drain([worker], s, warm_trades, len(traffic.warmup), n * warmup_bars, warm_preds, TIMEOUT_S)
        warm_settle = settle_workers([worker])  # the warm-up's write behind and scoring are not the backlog's
        tput = timed_backlog([worker], s, traffic.backlog, traffic.backlog_trades, traffic.backlog_bars,
                             traffic.backlog_bars, TIMEOUT_S, baseline=counts([worker]))
        backlog_settle = settle_workers([worker])
        layout = RedisLayout.of(s)
        lat = measure(s, {m: layout.history(m) for m in traffic.markets}, traffic.closes, plan.closes_per_s)
        rss = worker.rss_mb()
    return {"symbols": n, "trades_per_s": tput.trades_per_s, "p50_ms": lat.p50, "p99_ms": lat.p99,
            "rss_mb": rss, "rss_kb_per_market": (rss - idle_rss) * 1024 / n, "idle_rss_mb": idle_rss,
            "settle_s": {"after_warmup": warm_settle, "after_backlog": backlog_settle},
            "trades": tput.trades, "messages": tput.messages, "seconds": tput.seconds,
            "cpu_s_per_million_trades": tput.cpu_s_per_million_trades,
            "latency_samples": len(lat.e2e_ms), "latency_missing": lat.closes_sent - len(lat.e2e_ms),
            "trades_per_s_per_market": [min(traffic.per_bar.values()) / 60, max(traffic.per_bar.values()) / 60]}


def symbol_scan(base: Settings, tag: str, bars: Mapping[str, np.ndarray], plan: BenchPlan, home: Path,
                log_dir: Path, serving: ModelEntry, echo: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    for n in plan.scan_sizes:
        row = scan_size(base, f"{tag}-scan{n}", bars, n, plan, home, log_dir, serving)
        echo(f"[scan {n}] {row['trades_per_s']:,.0f} trades/s, p99 {row['p99_ms']:.1f} ms, RSS {row['rss_mb']:.0f} MB "
             f"({row['rss_kb_per_market']:.0f} KB per market)")
        rows.append(row)
    return rows


def scan_summary(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """From the smallest to the largest size: throughput drop and marginal RSS per added market."""
    if len(rows) < 2:
        return {"throughput_drop": None, "rss_growth_kb_per_market": None}
    small, large = rows[0], rows[-1]
    return {"throughput_drop": 1 - large["trades_per_s"] / small["trades_per_s"],
            "rss_growth_kb_per_market": (large["rss_mb"] - small["rss_mb"]) * 1024 / (large["symbols"] - small["symbols"])}

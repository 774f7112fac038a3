"""What a bench run reports: the machine and code measured, and the readable tables."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil


def code_version() -> dict[str, Any]:
    """The commit measured and whether the hot path had uncommitted changes (read-only git calls)."""
    repo = Path(__file__).resolve().parents[2]

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
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_avg_1_5_15": [round(x, 2) for x in load],
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def fmt(value: Any, unit: str = "") -> str:
    """A figure for a table: two decimals below 100, thousands separators above, "-" for none.

    >>> fmt(3.14159, " ms"), fmt(129060.4), fmt(None)
    ('3.14 ms', '129,060', '-')
    """
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:,.2f}{unit}" if isinstance(value, float) and abs(value) < 100 else f"{value:,.0f}{unit}"


def rows_table(rows: Sequence[tuple[str, str, str]]) -> str:
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value:>16}  {goal}" for name, value, goal in rows)


def table(result: dict[str, Any]) -> str:
    """The readable summary printed at the end."""
    s, goals = result["settings"], result["goals"]
    rows = [
        ("broker", result["broker"], ""),
        ("trades/s, one worker (backlog loaded first)", fmt(result["trades_per_s_per_worker"]),
         f">= {goals['trades_per_s_per_worker']:,}"),
        (f"messages/s ({s['trades_per_message']} trades each)", fmt(result["messages_per_s"]), ""),
        ("bare Faust ceiling, msg/s", fmt(result["bare_faust_msgs_per_s"]), ""),
        (f"bar close -> Redis p50 ({result['bar_to_redis_samples']} closes)", fmt(result["bar_to_redis_ms_p50"], " ms"),
         f"<= {goals['bar_to_redis_ms_p50']} ms"),
        ("bar close -> Redis p99", fmt(result["bar_to_redis_ms_p99"], " ms"), f"<= {goals['bar_to_redis_ms_p99']} ms"),
        ("  of which producer send -> ack p50", fmt(result["producer_ack_ms_p50"], " ms"), ""),
        ("  of which predict stage p50 / p99",
         f"{fmt(result['predict_stage_ms_p50'])} / {fmt(result['predict_stage_ms_p99'], ' ms')}", ""),
        ("  worker stages, mean ms per forecasting batch",
         ", ".join(f"{k} {v:.2f}" for k, v in (result.get("forecast_stages_ms_mean") or {}).items()) or "-", ""),
        ("model swap (announce -> loaded)", fmt(result["swap_s"], " s"), ""),
        ("worker RSS", fmt(result["worker_rss_mb"], " MB"), f"<= {goals['worker_rss_mb']:.0f} MB"),
        ("trades/s, one worker, backlog loaded alongside", fmt(result["one_worker_loaded_alongside_trades_per_s"]), ""),
        ("worker CPU s per million trades: 1 first / 1 alongside / 2 alongside",
         " / ".join(fmt(v) for v in (result["worker_cpu_s_per_million_trades"] or {}).values()) or "-", ""),
        ("worker CPU efficiency 2v1", fmt(result["worker_cpu_efficiency_2v1"]),
         f">= {goals['worker_cpu_efficiency_2v1']}"),
        ("two workers / one, throughput", fmt(result["two_worker_scaling"], "x"), "(2 shared cores)"),
    ]
    if result.get("peer"):
        peer, ratio = result["peer"], result["ratio_vs_peer"]
        rows += [(f"peer ({peer['name']}) trades/s", fmt(peer["trades_per_s"]), ""),
                 ("peer bar -> Redis p50 / p99",
                  f"{fmt(peer.get('bar_to_redis_ms_p50'))} / {fmt(peer.get('bar_to_redis_ms_p99'), ' ms')}", ""),
                 ("chaincast / peer throughput", fmt(ratio["throughput"], "x"), f">= {goals['ratio_vs_peer']}x")]
    for relay, floor in (result.get("floor") or {}).items():
        rows.append((f"floor ({relay} relay, no chaincast) p50 / p99",
                     f"{fmt(floor['bar_to_redis_ms_p50'])} / {fmt(floor['bar_to_redis_ms_p99'], ' ms')}", ""))
    rows += [(f"onnxruntime vs torch, {f}", f"x{v:.1f}", "") for f, v in result["ort_speedup_vs_torch"].items()]
    out = rows_table(rows)
    if result.get("symbols_scan"):
        out += "\n\n" + scan_table(result["symbols_scan"])
    if result.get("profile"):
        from chaincast.deploy.bench.profile import breakdown_table

        out += "\n\n" + breakdown_table(result["profile"])
    return out


def scan_table(rows: Sequence[dict[str, Any]]) -> str:
    """The symbol scan as a Markdown table (printed and pasted into BENCHMARKS.md as is)."""
    head = ("| markets | trades/s | p50 ms | p99 ms | worker RSS MB | RSS per market KB | CPU s / M trades |\n"
            "|---:|---:|---:|---:|---:|---:|---:|")
    return head + "".join(
        f"\n| {r['symbols']} | {fmt(r['trades_per_s'])} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | "
        f"{fmt(r['rss_mb'])} | {fmt(r['rss_kb_per_market'])} | {fmt(r['cpu_s_per_million_trades'])} |"
        for r in rows)

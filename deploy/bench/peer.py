"""The peer: the same job, 1-minute OHLCV bars from the same trades topic, written with Quix Streams.

What a user would otherwise write (``peer_app``); no inference: the peer's work
is a subset of chaincast's, so the ratios flatter the peer.

It runs in its own process (``python -m chaincast.deploy.bench.peer_app``), on the
same broker with the same client settings where they mean the same thing (the
embedded broker's short fetch wait); the harness times it exactly as it times
a worker: a pre-loaded backlog for throughput, timed closes for latency.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis

from chaincast.deploy.bench.harness import POLL_S, cpu_s, preload, settle
from chaincast.deploy.bench.latency import Latency, measure
from chaincast.deploy.bench.plan import Close
from chaincast.deploy.bench.peer_app import peer_prefix
from chaincast.deploy.embedded import Process
from chaincast.stream import kafka_options
from chaincast.stream.settings import Settings
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.topics import ensure_topics

NAME = "quixstreams"


@dataclass
class PeerResult:
    trades_per_s: float
    seconds: float
    bars: int
    rss_mb: float
    cpu_s_per_million_trades: float
    latency: Latency | None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": NAME, "trades_per_s": self.trades_per_s, "seconds": self.seconds,
                               "bars": self.bars, "rss_mb": self.rss_mb,
                               "cpu_s_per_million_trades": self.cpu_s_per_million_trades,
                               "measures": "closing trade sent -> its bar readable in Redis (no inference)"}
        if self.latency is not None:
            out |= {"bar_to_redis_ms_p50": self.latency.p50, "bar_to_redis_ms_p99": self.latency.p99,
                    "bar_to_redis_samples": len(self.latency.e2e_ms)}
        return out


def run_peer(settings: Settings, messages: Sequence[tuple[bytes, bytes]], trades: int, bars: int,
             symbols: Sequence[str], closes: Sequence[Close], per_s: float, log_dir: Path,
             timeout: float) -> PeerResult:
    """Pre-load ``messages`` on a topic of the peer's own, time the peer through them (its first
    message -> its last bar in Redis), then time ``closes``."""
    topic_in, topic_out = settings.topic_trades + "-peer", settings.topic_bars + "-peer"
    asyncio.run(ensure_topics(settings.model_copy(update={"topic_trades": topic_in, "topic_bars": topic_out})))
    asyncio.run(preload(settings, messages, topic=topic_in))
    layout = RedisLayout(peer_prefix(settings))
    keys = {s: layout.history(s) for s in symbols}
    client = redis.Redis.from_url(settings.redis_url or "", decode_responses=True)
    with tempfile.TemporaryDirectory(prefix="chaincast-peer-") as state:
        first_out = Path(state) / "first.json"
        env = {**os.environ, **settings.env(), "PYTHONUNBUFFERED": "1"}
        wait = ["--fetch-wait-ms", str(kafka_options.fetch_max_wait_ms(settings))] if settings.embedded_broker else []
        proc = Process("peer", [sys.executable, "-m", "chaincast.deploy.bench.peer_app", topic_in, topic_out,
                                settings.app_id + "-peer", str(Path(state) / "rocksdb"), str(first_out), *wait],
                       env=env, log_path=log_dir / "peer.log").start()
        try:
            ps = psutil.Process(proc.pid)
            deadline = time.monotonic() + timeout
            cpu0 = 0.0  # CPU seconds at the last poll before its first message: startup left out
            while True:
                if not proc.alive():
                    raise RuntimeError(f"the {NAME} peer exited; see {log_dir}/peer.log")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the {NAME} peer did not make {bars} bars within {timeout:.0f}s")
                if not first_out.exists():
                    cpu0 = cpu_s(proc.pid)
                elif sum(client.xlen(k) for k in keys.values()) >= bars:
                    break
                time.sleep(POLL_S)
            used = cpu_s(proc.pid) - cpu0
            rss = ps.memory_info().rss / 2**20
            first = json.loads(first_out.read_text())["first"]
            last = max(float(entries[0][1]["t"]) for k in keys.values() if (entries := client.xrevrange(k, count=1)))
            seconds = max(last - first, 1e-6)
            settle([proc.pid])  # as chaincast's worker: the closes begin on a quiet process
            lat = measure(settings, keys, closes, per_s, topic=topic_in) if closes else None
        finally:
            proc.stop(timeout=15)
            client.close()
    return PeerResult(trades / seconds, seconds, bars, rss, used / trades * 1e6, lat)


def ratios(chaincast: Mapping[str, float], peer: PeerResult) -> dict[str, float | None]:
    """chaincast / peer for throughput (higher is better) and peer / chaincast for latency and CPU
    per trade (so that above 1 always means chaincast is ahead)."""
    out: dict[str, float | None] = {"throughput": chaincast["trades_per_s"] / peer.trades_per_s,
                                    "cpu_per_trade": peer.cpu_s_per_million_trades / chaincast["cpu_s_per_million_trades"]}
    if peer.latency is not None:
        out["latency_p50"] = peer.latency.p50 / chaincast["p50_ms"]
        out["latency_p99"] = peer.latency.p99 / chaincast["p99_ms"]
    return out

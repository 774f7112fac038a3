"""Champion/challenger on real parts: broker, Redis, a stream worker and the retrainer as processes.

The bars are synthetic with predictable (mean-reverting) returns, sent straight
to the bars topic: on real 1-minute returns a challenger that significantly
beats persistence would be luck, and these tests must not depend on luck.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from aiokafka import AIOKafkaProducer

from chaincast.consumers.promotion import announce, model_update
from chaincast.consumers.registry import ModelEntry, Registry
from chaincast.deploy.embedded import Process, free_port
from chaincast.deploy.metrics import scrape
from chaincast.models.build import build_model
from chaincast.models.export import export_onnx
from chaincast.models.families import make_net
from chaincast.models.features import FEATURES
from chaincast.producers.replay import Market, replay
from chaincast.stream.predict import history_size
from chaincast.stream.records import ModelUpdate, Prediction, market_key
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream import kafka_options
from chaincast.stream.settings import Settings
from chaincast.stream.topics import ensure_topics
from tests.consumers.synth import ar_bars, to_bars
from tests.integration.conftest import read_topic

log = logging.getLogger(__name__)
SYMBOLS = ("BTCUSDT", "ETHUSDT")
PHASE1, PHASE2, PHASE3, PHASE4 = 1000, 150, 60, 60  # bars per symbol
TOTAL = PHASE1 + PHASE2 + PHASE3 + PHASE4


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def series() -> dict[str, np.ndarray]:
    # One bar more than the phases use: its first trade closes the last bar (bars close on a later minute's trade).
    return {sym: ar_bars(TOTAL + 1, seed=i + 1) for i, sym in enumerate(SYMBOLS)}


async def send_trades(settings: Settings, bars: dict[str, np.ndarray], start: int, stop: int) -> None:
    """The trades of bars [start, stop) of every symbol, as the exchange producer would send them.

    The worker folds them into bars and forecasts each bar it closes (one hop); bar ``stop``'s trades go
    too, because its first trade is what closes bar ``stop - 1`` (the next phase starts after it).
    """
    lo = 0 if start == 0 else start + 1
    await replay(settings, [Market(sym, rows[lo:stop + 1]) for sym, rows in bars.items()], speed=None)


async def send_bars(settings: Settings, bars: dict[str, np.ndarray], start: int, stop: int) -> None:
    """Bars [start, stop) of every symbol, interleaved in time, keyed by market."""
    producer = AIOKafkaProducer(**kafka_options.producer(settings))
    await producer.start()
    try:
        per_symbol = {sym: to_bars(sym, rows[start:stop]) for sym, rows in bars.items()}
        for i in range(stop - start):
            for sym, seq in per_symbol.items():
                await producer.send(settings.topic_bars, seq[i].dumps(), key=market_key("binance", sym).encode())
        await producer.flush()
    finally:
        await producer.stop()


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120.0) -> None:
    """Poll ``check`` (a bound on a hang, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def run(name: str, args: list[str], settings: Settings, log_dir: Path, port: int = 0, **env: str) -> Process:
    full = {**os.environ, **settings.env(), "CHAINCAST_METRICS_PORT": str(port), "PYTHONUNBUFFERED": "1", **env}
    return Process(name, [sys.executable, "-m", "chaincast.deploy.cli", *args], env=full,
                   log_path=log_dir / f"{name}.log").start()


def cli(settings: Settings, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "chaincast.deploy.cli", *args], env={**os.environ, **settings.env()},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def champion_of(settings: Settings, bars: dict[str, np.ndarray]) -> tuple[Registry, ModelEntry]:
    """Persistence serves first (live skill exactly 0: the scorer never asks for a retrain)."""
    asyncio.run(ensure_topics(settings))
    registry = Registry(settings.registry_dir)
    entry = build_model([b[:PHASE1] for b in bars.values()], "persistence", settings.window, settings.horizon,
                        registry, name=settings.model_name)
    registry.set_champion(settings.model_name, entry.version)
    asyncio.run(announce(settings, settings.model_name, entry))
    return registry, entry


def corrupted_updates(settings: Settings, registry: Registry, good: ModelEntry, tmp: Path) -> list[ModelUpdate]:
    """A flipped sha, a graph that yields NaN, a model of another window: each must be refused."""
    bad_sha = model_update(settings.model_name, good).model_copy(update={"sha256": "0" * 64})

    class NaNNet(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, -1, :4] * torch.log(x[:, -1, :4] * 0 - 1)  # log(-1): NaN, shape (B, 4)

    card = {"family": "linear", "window": settings.window, "horizon": 1, "target": "log_return",
            "features": list(FEATURES), "name": settings.model_name}
    nan = registry.put(export_onnx(NaNNet(), window=settings.window), card)
    short = make_net("linear", 16)[0].eval()
    wrong = registry.put(export_onnx(short, window=16), {**card, "window": 16})
    return [bad_sha, model_update(settings.model_name, nan), model_update(settings.model_name, wrong)]


def predictions_by_symbol(settings: Settings, expected: int) -> dict[str, list[Prediction]]:
    msgs = asyncio.run(read_topic(settings, settings.topic_predictions, lambda m: len(m) >= 2 * expected))
    out: dict[str, list[Prediction]] = {s: [] for s in SYMBOLS}
    for m in msgs:
        p = Prediction.loads(m.value)
        out[p.symbol].append(p)
    return out


def runs(versions: list[str]) -> list[str]:
    """Consecutive equal versions folded: the sequence of served versions."""
    return [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]


def test_better_challenger_is_promoted_swapped_live_refusals_and_rollback(settings_for, tmp_path, record_property):
    settings = settings_for(CHAINCAST_RETRAIN_EVERY_BARS=str(2 * PHASE1), CHAINCAST_RETRAIN_MAX_EPOCHS="20",
                            CHAINCAST_RETRAIN_PROMOTE_MARGIN="0.01")
    bars = series()
    registry, first = champion_of(settings, bars)
    worker_port, retrainer_port = free_port(), free_port()
    worker = run("worker", ["worker"], settings, tmp_path, worker_port)
    retrainer = run("retrainer", ["retrain"], settings, tmp_path, retrainer_port)
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    per_symbol = lambda n: n - history_size(settings.window) + 1  # noqa: E731 - forecastable bars
    xlen = lambda: min(r.xlen(RedisLayout.of(settings).history(s)) for s in SYMBOLS)  # noqa: E731
    try:
        asyncio.run(send_trades(settings, bars, 0, PHASE1))
        updates = asyncio.run(read_topic(settings, settings.topic_models,
                                         lambda m: any(ModelUpdate.loads(x.value).version != first.version
                                                       for x in m), timeout=180))
        promoted = next(u for u in map(lambda x: ModelUpdate.loads(x.value), updates) if u.version != first.version)
        assert registry.champion(settings.model_name).version == promoted.version
        assert promoted.family == settings.retrain_family and promoted.parent == first.version

        # Swap time: the update's creation to the worker's own "loaded" timestamp.
        wait_for("the swap", lambda: scrape(worker_port).get("chaincast_model_swap_seconds_count", 0) >= 1)
        m = scrape(worker_port)
        swap_s = m["chaincast_model_loaded_timestamp_seconds"] - promoted.created_at / 1000
        record_property("swap_seconds", round(swap_s, 3))
        log.warning("swap: ModelUpdate created -> worker serving it in %.3f s (histogram sum %.3f s)",
                    swap_s, m["chaincast_model_swap_seconds_sum"])
        rm = scrape(retrainer_port)
        log.warning("retrain round: %.2f s over %d round(s)", rm.get("chaincast_retrain_seconds_sum", 0),
                    rm.get("chaincast_retrain_seconds_count", 0))

        asyncio.run(send_trades(settings, bars, PHASE1, PHASE1 + PHASE2))
        wait_for("phase 2 forecasts", lambda: xlen() >= per_symbol(PHASE1 + PHASE2))

        for bad in corrupted_updates(settings, registry, registry.get(promoted.version), tmp_path):
            asyncio.run(announce_raw(settings, bad))
        wait_for("three refusals", lambda: scrape(worker_port).get("chaincast_models_refused_total", 0) >= 3)
        asyncio.run(send_trades(settings, bars, PHASE1 + PHASE2, PHASE1 + PHASE2 + PHASE3))
        wait_for("phase 3 forecasts", lambda: xlen() >= per_symbol(PHASE1 + PHASE2 + PHASE3))

        listing = cli(settings, "models", "list")
        assert f"* {promoted.version}" in listing and first.version in listing
        cli(settings, "models", "promote", first.version)  # rollback
        assert registry.champion(settings.model_name).version == first.version
        wait_for("the rollback", lambda: r.hget(RedisLayout.of(settings).model(settings.model_name), "version")
                 == first.version and scrape(worker_port).get("chaincast_model_swap_seconds_count", 0) >= 2)
        asyncio.run(send_trades(settings, bars, TOTAL - PHASE4, TOTAL))
        wait_for("phase 4 forecasts", lambda: xlen() >= per_symbol(TOTAL))
        preds = predictions_by_symbol(settings, per_symbol(TOTAL))
        score = r.hgetall(RedisLayout.of(settings).score("BTCUSDT"))
    finally:
        assert retrainer.stop() == 0, (tmp_path / "retrainer.log").read_text()[-3000:]
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]

    for sym in SYMBOLS:  # no forecast dropped or duplicated across three swaps
        assert r.xlen(RedisLayout.of(settings).history(sym)) == per_symbol(TOTAL)
        ps = sorted(preds[sym], key=lambda p: p.bar_ts)
        assert len({p.bar_ts for p in ps}) == len(ps) == per_symbol(TOTAL)
        assert runs([p.model_version for p in ps]) == [first.version, promoted.version, first.version]
        ts_of = {p.bar_ts: p.model_version for p in ps}
        assert ts_of[int(bars[sym][PHASE1 + PHASE2 + PHASE3 - 1, 0])] == promoted.version  # refusals changed nothing
    assert int(score["n"]) > 0 and f"skill@{promoted.version}" in score and float(score[f"skill@{promoted.version}"]) > 0


async def announce_raw(settings: Settings, update: ModelUpdate) -> None:
    producer = AIOKafkaProducer(**kafka_options.producer(settings))
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic_models, update.dumps(), key=update.name.encode())
    finally:
        await producer.stop()


@pytest.mark.slow
def test_retrainer_killed_mid_training_leaves_nothing_half_written_and_resumes(settings_for, tmp_path):
    settings = settings_for(CHAINCAST_RETRAIN_EVERY_BARS=str(2 * PHASE1), CHAINCAST_RETRAIN_MAX_EPOCHS="20")
    bars = series()
    registry, first = champion_of(settings, bars)
    before = sorted(p.name for p in settings.registry_dir.iterdir())
    asyncio.run(send_bars(settings, bars, 0, PHASE1))
    port = free_port()
    # A slow family first, so that the kill lands while the challenger trains.
    slow = run("retrainer", ["retrain"], settings, tmp_path, port, CHAINCAST_RETRAIN_FAMILY="gru",
               CHAINCAST_RETRAIN_MAX_EPOCHS="200")
    try:
        wait_for("training to start", lambda: scrape(port).get("chaincast_retrain_in_progress", 0) == 1)
        slow.kill()  # SIGKILL to the process group: the retrainer and its training process
    finally:
        slow.stop()
    assert sorted(p.name for p in settings.registry_dir.iterdir()) == before  # no stray or partial file
    assert registry.champion(settings.model_name).version == first.version

    port = free_port()
    again = run("retrainer2", ["retrain"], settings, tmp_path, port)
    try:  # the killed round's bars were never committed: the new process trains on them at once
        wait_for("the resumed round", lambda: scrape(port).get("chaincast_retrain_runs_total", 0) >= 1, 180)
    finally:
        assert again.stop(60) == 0, (tmp_path / "retrainer2.log").read_text()[-3000:]
    champion = registry.champion(settings.model_name)
    assert champion.version != first.version and champion.card["family"] == "linear"
    for entry in registry.list():  # every model complete: its bytes match its card
        assert entry.onnx_path.exists() and entry.card["sha256"] == entry.sha256
    assert not list(settings.registry_dir.glob(".*.tmp"))

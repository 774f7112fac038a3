"""Fault injection on real parts: a worker of two dies, Redis stops for 10 s, garbage arrives at volume.

Every test is bounded in time, runs on loopback and stops the processes it starts.
"""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np
import pytest
import redis

from chaincast.consumers.fee_promotion import initial_fee_champions
from chaincast.consumers.promotion import announce
from chaincast.consumers.registry import Registry
from chaincast.deploy.embedded import free_port, start_broker
from chaincast.models.blocks import load_blocks
from chaincast.models.fee_models import FeeFit
from chaincast.stream import kafka_options
from chaincast.stream.failure import EXIT_UNACKNOWLEDGED
from chaincast.stream.predict import history_size
from chaincast.stream.topics import ensure_topics
from chaincast.producers.replay import Market, replay
from chaincast.stream.records import Bar, Block, DeadLetter, Prediction
from chaincast.stream.redis_layout import RedisLayout
from tests.conftest import TEST_DATA, start_persistent_redis
from tests.integration.conftest import day_of, markets, read_topic, send_raw, start_worker, serve_model
from tests.integration.test_pipeline import (
    CLOSED_PER_SYMBOL,
    SYMBOLS,
    all_bars,
    assert_bars_match_file,
    bars_by_symbol,
    expected_predictions,
)


# The survivor's rebalance is where Faust used to lose records of the partitions it kept
# (stream.kafka_options._Consumer: its partitions are now resumed only once seeked).
@pytest.mark.slow
def test_two_workers_one_killed_the_other_takes_its_partitions(served, tmp_path):
    settings, _ = served()
    first = start_worker(settings, tmp_path / "a")
    second = start_worker(settings, tmp_path / "b")
    try:
        async def replay_and_kill_one() -> None:
            job = asyncio.create_task(replay(settings, markets()))
            await read_topic(settings, settings.topic_bars, lambda m: len(m) >= 300)
            first.kill()
            await job

        asyncio.run(replay_and_kill_one())
        bar_msgs = asyncio.run(read_topic(settings, settings.topic_bars, all_bars, timeout=180))
    finally:
        first.stop()
        second.stop()
    assert_bars_match_file(bars_by_symbol(bar_msgs))


@pytest.mark.slow
def test_redis_stopped_10s_mid_replay_every_forecast_is_in_redis_afterwards(served, tmp_path):
    proc, port = start_persistent_redis(tmp_path / "redis")
    url = f"redis://127.0.0.1:{port}/0"
    settings, _ = served(REDIS_URL=url)
    worker = start_worker(settings, tmp_path)
    n = expected_predictions(settings)
    try:
        async def replay_through_an_outage() -> list:
            nonlocal proc
            job = asyncio.create_task(replay(settings, markets()))
            await read_topic(settings, settings.topic_predictions, lambda m: len(m) >= 300)
            proc.stop()  # Redis goes away mid-replay: the worker holds its batch and retries
            await asyncio.sleep(10)  # the outage under test, not a wait for a condition
            proc, _ = start_persistent_redis(tmp_path / "redis", port)  # back on the same address, same data
            await job
            return await read_topic(settings, settings.topic_predictions, lambda m: len(m) >= 2 * n, timeout=180)

        preds = asyncio.run(replay_through_an_outage())
        made = {(p.symbol, f"{p.bar_ts}-{p.horizon}") for p in (Prediction.loads(m.value) for m in preds)}
        r = redis.Redis.from_url(url, decode_responses=True)
        keys = RedisLayout.of(settings)
        stored: set = set()
        for _ in range(600):  # the topic send follows the Redis write; allow the last pipeline to land
            stored = {(sym, i) for sym in SYMBOLS for i, _ in r.xrange(keys.history(sym))}
            if stored >= made:
                break
            time.sleep(0.1)
        latest = {sym: r.hget(keys.latest(sym), "bar_ts") for sym in SYMBOLS}
    finally:
        worker.stop()
        proc.stop()
    assert worker.popen.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert len(made) == 2 * n
    assert stored == made  # every forecast id, once: none lost in the outage, none doubled by retries
    assert latest == {sym: str(int(day_of(sym)[CLOSED_PER_SYMBOL - 1, 0])) for sym in SYMBOLS}


# The broker this test brings up late is the embedded one (deploy.embedded.start_broker on the port the
# worker was given), so only the embedded client settings can talk to it; the waiting itself
# (stream.app.wait_for_broker) is the same code on either broker.
@pytest.mark.one_broker
def test_broker_unreachable_at_start_the_worker_waits_then_loses_nothing(settings_for, tmp_path):
    port = free_port()
    settings = settings_for(KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}")  # nothing listens there yet
    worker = start_worker(settings, tmp_path)
    log = tmp_path / "worker.log"
    broker = None
    try:
        deadline = time.monotonic() + 120
        while "broker unreachable" not in (log.read_text() if log.exists() else ""):
            assert worker.alive() and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        (tmp_path / "broker").mkdir()
        broker, _ = start_broker(tmp_path / "broker", port)
        serve_model(settings)
        asyncio.run(replay(settings, [Market("BTCUSDT", day_of("BTCUSDT")[:120])]))
        bars = asyncio.run(read_topic(settings, settings.topic_bars, lambda m: len(m) >= 119, timeout=180))
        n = 119 - history_size(settings.window) + 1
        preds = asyncio.run(read_topic(settings, settings.topic_predictions, lambda m: len(m) >= n))
    finally:
        code = worker.stop()
        if broker is not None:
            broker.stop()
    assert code == 0, log.read_text()[-3000:]
    assert sorted(Bar.loads(m.value).ts for m in bars) == [int(t) for t in day_of("BTCUSDT")[:119, 0]]
    assert len({Prediction.loads(m.value).bar_ts for m in preds}) == n


def test_garbage_at_volume_all_dead_lettered_worker_keeps_going(served, tmp_path):
    settings, _ = served()
    rng = random.Random(7)
    garbage = [(rng.choice([b"binance:BTCUSDT", b"junk", None]), rng.randbytes(rng.randint(0, 200)))
               for _ in range(2000)]
    worker = start_worker(settings, tmp_path)
    try:
        asyncio.run(send_raw(settings, settings.topic_trades, garbage))
        letters = asyncio.run(read_topic(settings, settings.topic_deadletter, lambda m: len(m) >= len(garbage)))
        asyncio.run(replay(settings, [Market("BTCUSDT", day_of("BTCUSDT")[:120])]))
        bars = asyncio.run(read_topic(settings, settings.topic_bars, lambda m: len(m) >= 119))
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert len(letters) == len(garbage)
    assert {DeadLetter.loads(m.value).reason.split(":")[0] for m in letters} <= {"invalid", "bad_key"}
    assert len(bars) == 119


@pytest.mark.slow
def test_redis_down_beyond_the_budget_the_fee_agent_stops_unacknowledged_nothing_lost(settings_for, tmp_path):
    """Fee history writes retry like forecasts; past the budget the worker stops before acking (exit 75),
    and the restarted worker forecasts the blocks of the unacknowledged batch."""
    proc, port = start_persistent_redis(tmp_path / "redis")
    settings = settings_for(REDIS_URL=f"redis://127.0.0.1:{port}/0", CHAINCAST_REDIS_RETRY_BUDGET_S="3",
                            CHAINCAST_FEE_HORIZONS="1", CHAINCAST_FEE_WINDOW="8")
    rows = load_blocks(TEST_DATA / "chain" / "mainnet_blocks_18640000_18643999.csv.gz").blocks
    asyncio.run(ensure_topics(settings))
    registry = Registry(settings.registry_dir)
    for name, entry in initial_fee_champions(registry, settings, rows[:2000], families=("linear",),
                                             options=FeeFit(max_epochs=1, max_steps_per_epoch=10)).items():
        asyncio.run(announce(settings, name, entry))
    blocks = [Block(chain_id=1, number=int(r[0]), hash=f"0x{int(r[0]):064x}", parent_hash=f"0x{int(r[0]) - 1:064x}",
                    timestamp=int(r[1]), base_fee=int(r[2]), gas_used=int(r[3]), gas_limit=int(r[4]),
                    tx_count=0 if np.isnan(r[5]) else int(r[5])) for r in rows[2000:2060]]
    send = lambda part: asyncio.run(send_raw(settings, settings.topic_blocks,  # noqa: E731
                                             [(b"1", b.dumps()) for b in part]))
    keys = RedisLayout.of(settings)
    r = redis.Redis(port=port, decode_responses=True)

    def forecast_blocks() -> set[int]:
        return {int(e["block"]) for _, e in r.xrange(keys.fee_history(1)) if e["target"] == "base_fee"}

    def wait(what: str, check, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"gave up waiting for {what}"
            time.sleep(0.2)

    workers = [start_worker(settings, tmp_path / "w0")]
    try:
        send(blocks[:30])
        wait("the first fee forecasts", lambda: blocks[29].number in forecast_blocks())
        proc.stop()  # Redis goes away for longer than the budget
        send(blocks[30:])
        wait("the worker to stop", lambda: not workers[0].alive())
        proc, _ = start_persistent_redis(tmp_path / "redis", port)
        time.sleep(kafka_options.restart_delay_s(settings))  # as `chaincast up` would
        workers.append(start_worker(settings, tmp_path / "w1"))
        wait("the fee forecasts after the restart", lambda: blocks[-1].number in forecast_blocks())
        made = forecast_blocks()
    finally:
        codes = [w.stop() for w in workers]
        proc.stop()
    log = (tmp_path / "w0" / "worker.log").read_text()
    assert codes[0] == EXIT_UNACKNOWLEDGED and "stream.fees" in log and "stopping before the batch" in log, log[-3000:]
    assert codes[1] == 0, (tmp_path / "w1" / "worker.log").read_text()[-3000:]
    first = min(made)  # the first block with a full window
    assert made == {b.number for b in blocks if b.number >= first}  # every block after it, none lost

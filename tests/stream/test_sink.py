"""The Redis sink against a real Redis server: layout, idempotence, ordering."""

from __future__ import annotations

import redis

from chaincast.stream.records import ModelUpdate, Prediction
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.sink import RedisSink


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

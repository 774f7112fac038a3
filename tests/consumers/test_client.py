"""The Python client on the real embedded broker and Redis: typed forecasts from the topic and from Redis."""

from __future__ import annotations

import asyncio

from chaincast.consumers.client import RedisForecasts, TopicSubscriber, forecaster_id
from chaincast.stream.publish import Publisher
from chaincast.stream.records import Prediction, market_key
from chaincast.stream.sink import RedisSink
from chaincast.stream.topics import ensure_topics


def prediction(symbol: str, minute: int, horizon: int = 1) -> Prediction:
    return Prediction(exchange="binance", symbol=symbol, bar_ts=minute * 60_000, horizon=horizon, y_hat=0.001,
                      q10=-0.01, q50=0.001, q90=0.01, price=100.0 + minute, price_hat=100.1 + minute,
                      model_name="forecaster", model_version="v1", created_at=0, latency_ms=1.0)


def test_subscribe_yields_typed_predictions_and_skips_unreadable(settings_for) -> None:  # noqa: ANN001
    settings = settings_for()
    sent = [prediction("BTCUSDT", m) for m in range(5)] + [prediction("ETHUSDT", 9)]

    async def run() -> tuple[list[Prediction], int]:
        await ensure_topics(settings)
        async with Publisher(settings) as pub:
            await pub.send_and_wait(settings.topic_predictions, market_key("binance", "BTCUSDT"), sent[0])
            newer = sent[1].model_dump(by_alias=True) | {"schema": 99}
            import json
            await pub.producer.send_and_wait(settings.topic_predictions, json.dumps(newer).encode(),
                                            key=market_key("binance", "BTCUSDT").encode())  # same partition, in order
            for p in sent[1:]:
                await pub.send_and_wait(settings.topic_predictions, market_key("binance", p.symbol), p)
        sub = TopicSubscriber(settings, from_beginning=True)
        got = []

        async def take() -> None:
            async for p in sub.subscribe(symbols=["btcusdt"]):
                got.append(p)
                if len(got) == 5:
                    return

        await asyncio.wait_for(take(), 120)
        return got, sub.skipped

    got, skipped = asyncio.run(run())
    assert sorted(got, key=lambda p: p.bar_ts) == sent[:5]  # typed, equal to what was sent; ETH filtered out
    assert skipped == 1  # the record of a newer schema


def test_redis_latest_and_history(settings_for) -> None:  # noqa: ANN001
    settings = settings_for()

    async def run() -> tuple[list[Prediction], list[Prediction]]:
        sink = RedisSink(settings.redis_url, settings.redis_prefix)
        await sink.write([prediction("BTCUSDT", m) for m in range(10)])
        await sink.close()
        async with RedisForecasts(settings) as client:
            return await client.latest(), await client.history("btcusdt", since=3 * 60_000, limit=4)

    latest, history = asyncio.run(run())
    assert [(p.symbol, p.bar_ts, forecaster_id(p)) for p in latest] == [("BTCUSDT", 9 * 60_000, "log_return:h1")]
    assert [p.bar_ts // 60_000 for p in history] == [3, 4, 5, 6]

"""Local exchange + producer + the real embedded broker: a real day arrives exactly once per trade id.

Two disruptions: the exchange goes down mid-stream and comes back replaying from the start
(reconnect, duplicates dropped); and the producer restarts from its checkpoint while the
exchange has moved on (gap detected, backfilled over REST).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import numpy as np
import pytest
from tests.producers.exchange_helpers import BTC_DAY, ETH_DAY, exchange_settings, read_topic, until  # noqa: F401 (a fixture)

from chaincast.models.history import TS, load_bars
from chaincast.producers.checkpoint import Checkpoint
from chaincast.stream.topics import ensure_topics
from chaincast.producers.exchange import BINANCE, ExchangeProducer
from chaincast.producers.exchange_server import LocalExchange
from chaincast.stream.publish import Publisher
from chaincast.producers.synth import bar_trades, bar_ts_of, first_trade_id
from chaincast.stream.records import Bar, Trade, TradeBatch
from chaincast.stream.settings import Settings

MARKETS = {"BTCUSDT": load_bars(BTC_DAY), "ETHUSDT": load_bars(ETH_DAY)}
EXPECTED = {s: [t for row in bars for t in bar_trades("binance", s, row)] for s, bars in MARKETS.items()}


def comparable(trades: list[Trade]) -> list[dict]:
    return [t.model_dump(exclude={"ts_ingest"}) for t in trades]


async def trades_in_kafka(settings: Settings, total: int) -> dict[str, list[Trade]]:
    count = lambda records: sum(len(TradeBatch.loads(r.value).trades) for r in records)  # noqa: E731
    by_symbol: dict[str, list[Trade]] = defaultdict(list)
    for record in await read_topic(settings, settings.topic_trades, lambda rs: count(rs) >= total):
        batch = TradeBatch.loads(record.value)
        assert record.key.decode() == f"binance:{batch.symbol}"
        by_symbol[batch.symbol].extend(batch.trades)
    return by_symbol


async def test_replay_arrives_exactly_once_across_an_exchange_restart(exchange_settings) -> None:
    settings = exchange_settings()
    await ensure_topics(settings)
    total = sum(len(v) for v in EXPECTED.values())
    server = await LocalExchange(MARKETS, speed=None).start()
    async with Publisher(settings) as publisher, asyncio.timeout(120):
        producer = ExchangeProducer(settings, publisher, BINANCE, server.url, list(MARKETS), ["trade", "kline_1m"])
        stop = asyncio.Event()
        task = asyncio.create_task(producer.run(stop))
        await until(lambda: server.sent >= 3000)
        await server.stop()  # the exchange goes down mid-stream ...
        assert not server.finished.is_set()
        server = await LocalExchange(MARKETS, speed=None, port=server.port).start()  # ... and replays from the start
        await until(lambda: producer.stats.trades >= total)
        stop.set()
        stats = await task
    await server.stop()
    assert stats.connections == 2 and stats.duplicates > 0
    assert (stats.trades, stats.missing, stats.dead_letters) == (total, 0, 0)
    got = await trades_in_kafka(settings, total)
    for symbol, expected in EXPECTED.items():
        assert comparable(got[symbol]) == comparable(expected)  # complete, in order, no duplicates
    closed = await read_topic(settings, settings.topic_exchange_klines, lambda rs: len(rs) >= stats.klines_closed)
    bars = [Bar.loads(r.value) for r in closed]
    assert len(bars) == stats.klines_closed > 0 and all(b.trades == 4 for b in bars)


@pytest.mark.slow
async def test_producer_restart_resumes_from_checkpoint_and_backfills_the_gap(exchange_settings) -> None:
    settings = exchange_settings()
    await ensure_topics(settings)
    markets = {"BTCUSDT": MARKETS["BTCUSDT"]}
    expected = EXPECTED["BTCUSDT"]
    async with Publisher(settings) as publisher, asyncio.timeout(300):  # a loaded machine took over 120 s
        server = await LocalExchange(markets, speed=None).start()
        first = ExchangeProducer(settings, publisher, BINANCE, server.url, ["btcusdt"], ["trade"])
        stop = asyncio.Event()
        task = asyncio.create_task(first.run(stop))
        await until(lambda: first.stats.trades >= 1000)
        await server.stop()
        stop.set()
        await task

        resume = Checkpoint.for_endpoint(settings.home, "binance", server.url).load()["BTCUSDT"]
        assert resume.trade_id == first.acked["BTCUSDT"].trade_id
        # The market moved on while we were away: the exchange now streams from 100 minutes later.
        # (at most the day's last minute: at max speed a fast producer may have read most of the day)
        ts = MARKETS["BTCUSDT"][:, TS]
        later = int(ts[min(np.searchsorted(ts, bar_ts_of(resume.trade_id)) + 100, len(ts) - 1)])
        server = await LocalExchange(markets, speed=None, start_ms=later, port=server.port).start()
        second = ExchangeProducer(settings, publisher, BINANCE, server.url, ["btcusdt"], ["trade"])
        assert second.cursor.last["BTCUSDT"] == resume
        stop = asyncio.Event()
        task = asyncio.create_task(second.run(stop))
        await until(lambda: second.acked.get("BTCUSDT", resume).trade_id >= expected[-1].trade_id)
        stop.set()
        stats = await task
        await server.stop()
    assert (stats.gaps, stats.missing, stats.backfilled) == (1, 0, first_trade_id(later) - resume.trade_id - 1)
    got = await trades_in_kafka(settings, len(expected))
    assert comparable(got["BTCUSDT"]) == comparable(expected)


async def test_connection_rollover_loses_nothing(exchange_settings) -> None:
    """Rolling the connection over (the exchange's 24 h limit, here a fraction of a second) drops
    the frames in flight; the producer notices the gap and backfills it from the same exchange."""
    settings = exchange_settings(CHAINCAST_EXCHANGE_MAX_CONNECTION_S="0.1")
    await ensure_topics(settings)
    expected = EXPECTED["ETHUSDT"]
    async with LocalExchange({"ETHUSDT": MARKETS["ETHUSDT"]}, speed=None) as server, \
            Publisher(settings) as publisher, asyncio.timeout(120):
        producer = ExchangeProducer(settings, publisher, BINANCE, server.url, ["ethusdt"], ["trade", "kline_1m"])
        stop = asyncio.Event()
        task = asyncio.create_task(producer.run(stop))
        await until(lambda: producer.stats.trades >= len(expected))
        stop.set()
        stats = await task
    assert stats.connections >= 2 and stats.missing == 0
    got = await trades_in_kafka(settings, len(expected))
    assert comparable(got["ETHUSDT"]) == comparable(expected)

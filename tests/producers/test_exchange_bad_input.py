"""Against servers that are not the project's own: recorded real frames plus garbage.

A tiny websockets server replays a recorded Binance futures session (aggTrade and kline
frames, as received in 2021) with malformed frames mixed in, then says serverShutdown; a
second one replays a recorded Coinbase matches session with one match missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import websockets
from tests.producers.exchange_helpers import exchange_settings, read_topic, until  # noqa: F401 (a fixture)
from tests.producers.wire_recordings import messages

from chaincast.producers import coinbase
from chaincast.stream.topics import ensure_topics
from chaincast.producers.exchange import BINANCE, COINBASE, ExchangeProducer
from chaincast.stream.publish import Publisher
from chaincast.stream.records import DeadLetter, Gap, TradeBatch

TRADE = orjson.loads(next(raw for _, raw in messages("cryptofeed/BINANCE_FUTURES.ws.1.0.gz") if "@aggTrade" in raw))


def garbled(**change: object) -> str:
    data = {**TRADE["data"], **change}
    return orjson.dumps({"stream": TRADE["stream"], "data": {k: v for k, v in data.items() if v is not None}}).decode()


GARBAGE = [  # (frame, reason kind)
    ("this is not json", "json"),
    (b"\xff\xfe\x00binary", "json"),
    (next(raw for _, raw in messages("cryptofeed/BINANCE_FUTURES.ws.1.0.gz") if "depthUpdate" in raw), "event"),
    ('{"stream":"ctkusdt@trade","data":{"e":"weird","E":1}}', "event"),
    (garbled(p=None), "field"),
    (garbled(a="16599292"), "field"),
    (garbled(p="NaN"), "value"),
    (garbled(q="0"), "value"),
    (garbled(p="-1.5"), "value"),
    (garbled(s="BTCUSDT"), "symbol"),
    ('{"stream":"ctkusdt@aggTrade","data":{"pad":"' + "x" * 5000 + '"}}', "size"),
]


async def foreign_server(first: list[str | bytes], received: list[str]) -> tuple[websockets.Server, Callable[[], int]]:
    """Sends ``first`` on the first connection, nothing on later ones; records what clients send."""
    connections = 0

    async def handler(ws: websockets.ServerConnection) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            for frame in first:
                await ws.send(frame)
        async for message in ws:
            received.append(message)

    server = await websockets.serve(handler, "127.0.0.1", 0)
    return server, lambda: connections


async def test_recorded_binance_frames_publish_and_garbage_is_dead_lettered(exchange_settings) -> None:
    settings = exchange_settings(CHAINCAST_MAX_MESSAGE_BYTES="4096")
    await ensure_topics(settings)
    recorded = [raw for _, raw in messages("cryptofeed/BINANCE_FUTURES.ws.1.0.gz")
                if raw.startswith(('{"stream":"ctkusdt@', '{"stream":"sushiusdt@')) and ("@aggTrade" in raw or "@kline_1m" in raw)]
    frames: list[str | bytes] = list(recorded)
    for i, (bad, _) in enumerate(GARBAGE):  # spread the garbage through the session
        frames.insert(1 + i * len(recorded) // len(GARBAGE), bad)
    frames.append('{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1}}')
    server, connections = await foreign_server(frames, [])
    expected = {s: [orjson.loads(r)["data"]["a"] for r in recorded if f'"{s}@aggTrade"' in r] for s in ("ctkusdt", "sushiusdt")}
    async with Publisher(settings) as publisher, asyncio.timeout(60):
        producer = ExchangeProducer(settings, publisher, BINANCE, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}",
                                    ["ctkusdt", "sushiusdt"], ["aggTrade", "kline_1m"])
        stop = asyncio.Event()
        task = asyncio.create_task(producer.run(stop))
        await until(lambda: connections() == 2 and producer.stats.trades == sum(map(len, expected.values())))
        stop.set()
        stats = await task
    server.close()
    assert (stats.dead_letters, stats.gaps) == (len(GARBAGE), 0)

    trades: dict[str, list[int]] = {"CTKUSDT": [], "SUSHIUSDT": []}
    for r in await read_topic(settings, settings.topic_trades, lambda rs: False if not rs else
                              sum(len(TradeBatch.loads(x.value).trades) for x in rs) >= stats.trades):
        batch = TradeBatch.loads(r.value)
        trades[batch.symbol] += [t.trade_id for t in batch.trades]
    assert trades == {"CTKUSDT": expected["ctkusdt"], "SUSHIUSDT": expected["sushiusdt"]}

    letters = [DeadLetter.loads(r.value) for r in await read_topic(
        settings, settings.topic_deadletter, lambda rs: len(rs) >= len(GARBAGE), partitions=1)]
    assert [letter.reason.split(":")[0] for letter in letters] == [kind for _, kind in GARBAGE]
    assert all(letter.source == "producer.exchange" for letter in letters)
    assert letters[0].raw == "this is not json" and letters[4].raw == GARBAGE[4][0]
    assert letters[-1].reason.startswith("size: ")


async def test_coinbase_matches_through_the_same_producer(exchange_settings) -> None:
    settings = exchange_settings()
    await ensure_topics(settings)
    session = [raw for _, raw in messages("cryptofeed/COINBASE.ws.28.0.matches.gz")
               if '"type":"match"' in raw or '"type":"last_match"' in raw or '"type":"subscriptions"' in raw]
    skl_usd = [i for i, raw in enumerate(session) if '"product_id":"SKL-USD"' in raw]
    lost = orjson.loads(session.pop(skl_usd[len(skl_usd) // 2]))  # one match never arrives: a gap
    matches = [orjson.loads(raw) for raw in session if '"type":"subscriptions"' not in raw]
    products = sorted({m["product_id"] for m in matches})
    received: list[str] = []
    server, connections = await foreign_server(session, received)
    async with Publisher(settings) as publisher, asyncio.timeout(60):
        producer = ExchangeProducer(settings, publisher, COINBASE, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}",
                                    products, ["matches"])
        stop = asyncio.Event()
        task = asyncio.create_task(producer.run(stop))
        await until(lambda: producer.stats.trades == len(matches))
        stop.set()
        stats = await task
    server.close()
    assert received == [coinbase.subscribe_message(products)]
    assert (stats.gaps, stats.missing, stats.backfilled, stats.dead_letters) == (1, 1, 0, 0)
    gaps = [Gap.loads(r.value) for r in await read_topic(settings, settings.topic_gaps, lambda rs: len(rs) >= 1,
                                                         partitions=1)]
    assert [(g.exchange, g.symbol, g.before_id - g.after_id - 1, g.missing) for g in gaps] == [
        ("coinbase", "SKL-USD", 1, 1)]
    assert gaps[0].after_id == lost["trade_id"] - 1
    keys = {r.key.decode() for r in await read_topic(
        settings, settings.topic_trades,
        lambda rs: sum(len(TradeBatch.loads(x.value).trades) for x in rs) >= len(matches))}
    assert keys == {f"coinbase:{p}" for p in products}

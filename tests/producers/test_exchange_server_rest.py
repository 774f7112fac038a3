"""The local exchange speaks Binance: websocket paths and framing, REST backfill endpoints."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
import websockets
from tests.producers.exchange_helpers import BTC_DAY, until
from websockets.exceptions import InvalidStatus

from chaincast.models.history import load_bars
from chaincast.producers import binance
from chaincast.producers.exchange_server import LocalExchange
from chaincast.producers.synth import bar_trades

BARS = load_bars(BTC_DAY)[:60]
EXPECTED = [t for row in BARS for t in bar_trades("binance", "BTCUSDT", row)]


@pytest.fixture
async def exchange():
    async with LocalExchange({"BTCUSDT": BARS}, speed=None) as ex:
        yield ex


async def test_combined_stream_sends_the_synthetic_trades_and_klines(exchange: LocalExchange) -> None:
    url = f"{exchange.url}/stream?streams=btcusdt@trade/btcusdt@kline_1m"
    trades, klines = [], []
    async with websockets.connect(url) as ws, asyncio.timeout(30):
        while len(trades) < len(EXPECTED):
            frame = orjson.loads(await ws.recv())
            assert set(frame) == {"stream", "data"}
            event = binance.normalise(frame)
            (trades if frame["stream"] == "btcusdt@trade" else klines).append(event)
    assert [t.model_dump(exclude={"ts_ingest"}) for t in trades] == [t.model_dump(exclude={"ts_ingest"}) for t in EXPECTED]
    closed = [k.bar for k in klines if k.closed]
    assert [(b.ts, b.open, b.high, b.low, b.close) for b in closed] == [tuple(r[:5]) for r in BARS[: len(closed)]]


async def test_raw_stream_and_live_subscribe(exchange: LocalExchange) -> None:
    async with websockets.connect(f"{exchange.url}/ws/btcusdt@aggTrade") as ws, asyncio.timeout(30):
        first = orjson.loads(await ws.recv())
        assert first["e"] == "aggTrade" and first["a"] == first["f"] == first["l"] == EXPECTED[0].trade_id
        await ws.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 7}))
        while (reply := orjson.loads(await ws.recv())).get("id") != 7:
            pass
        assert reply == {"result": ["btcusdt@aggTrade"], "id": 7}


async def test_bad_stream_names_are_refused(exchange: LocalExchange) -> None:
    with pytest.raises(InvalidStatus) as err:
        async with websockets.connect(f"{exchange.url}/stream?streams=btcusdt@depth"):
            pass
    assert err.value.response.status_code == 400


async def test_rest_backfill_serves_only_what_has_traded(exchange: LocalExchange) -> None:
    # close_timeout: the unread replay backs up behind the close frame; no need to wait for it.
    async with websockets.connect(f"{exchange.url}/ws/btcusdt@trade", close_timeout=0.1) as ws, asyncio.timeout(30):
        for _ in range(41):
            await ws.recv()
        await until(lambda: exchange.markets["BTCUSDT"].released_id >= EXPECTED[40].trade_id)
        released = exchange.markets["BTCUSDT"].released_id
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{exchange.port}") as http:
            async def get(path: str, **params: str):
                async with http.get(path, params=params) as resp:
                    return resp.status, await resp.json()

            status, rows = await get("/api/v3/aggTrades", symbol="BTCUSDT", fromId=str(EXPECTED[10].trade_id), limit="5")
            assert status == 200
            got, _ = binance.backfill_trades("BTCUSDT", rows, True, EXPECTED[10].trade_id - 1, 10**12)
            assert [t.model_dump(exclude={"ts_ingest"}) for t in got] == [
                t.model_dump(exclude={"ts_ingest"}) for t in EXPECTED[10:15]]
            _, rows = await get("/api/v3/aggTrades", symbol="btcusdt", startTime=str(EXPECTED[5].ts_event), limit="1000")
            # The replay keeps releasing while we ask (a loaded machine shows it): the answer ends between the
            # release seen before the request and the one seen after it, never in the future.
            assert rows[0]["a"] == EXPECTED[5].trade_id
            assert released <= rows[-1]["a"] <= exchange.markets["BTCUSDT"].released_id
            _, klines = await get("/api/v3/klines", symbol="BTCUSDT", interval="1m", startTime=str(int(BARS[2, 0])),
                                  limit="3")
            assert [[k[0], float(k[1]), float(k[4]), k[8]] for k in klines] == [
                [int(r[0]), r[1], r[4], 4] for r in BARS[2:5]]
            status, body = await get("/api/v3/aggTrades")
            assert (status, body["code"]) == (400, -1102)
            status, body = await get("/api/v3/aggTrades", symbol="DOGEUSDT")
            assert (status, body["code"]) == (400, -1121)
            status, body = await get("/api/v3/klines", symbol="BTCUSDT", interval="5m")
            assert (status, body["code"]) == (400, -1120)

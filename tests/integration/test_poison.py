"""Poisonous input on real parts: well-formed records that would wedge a market, and odd ones.

A trade dated 2100, a trade id of 2^62, price x qty = 1e300 x 1e300, a 1 MB symbol, a
negative-zero price and unicode symbols are mixed into a replay (straight into the
trades topic, and through the exchange producer from a websocket server): every good
trade still becomes a bar, each refusal is a dead letter with its reason.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import orjson
import websockets

from chaincast.models.history import TS
from chaincast.producers.exchange import BINANCE, ExchangeProducer
from chaincast.producers.synth import bar_trades
from chaincast.stream.publish import Publisher
from chaincast.stream.records import Bar, DeadLetter, Prediction, Trade, TradeBatch
from tests.integration.conftest import day_of, read_topic, send_raw, start_worker

BARS = 120
SYMBOLS = ("BTCUSDT", "ETHUSDT")
YEAR_2100_MS = 4_102_444_800_000


def batch_of(trades: list[Trade]) -> tuple[bytes, bytes]:
    t = trades[0]
    return f"binance:{t.symbol}".encode(), TradeBatch(exchange="binance", symbol=t.symbol, trades=trades).dumps()


def test_poison_mixed_into_a_replay_every_good_trade_becomes_a_bar(served, tmp_path):
    settings, _ = served()
    rows = {s: day_of(s)[:BARS] for s in SYMBOLS}
    btc = bar_trades("binance", "BTCUSDT", rows["BTCUSDT"][30])
    last = btc[-1]  # poison rides in the minute of bar 30, after its last trade
    key = b"binance:BTCUSDT"
    jump = last.model_copy(update={"trade_id": 2**62, "qty": 1e-9})  # the close again, a hair of volume
    poison = [
        (key, last.model_copy(update={"trade_id": last.trade_id + 10, "ts_event": YEAR_2100_MS}).dumps()),
        (key, jump.dumps()),
        (key, last.model_copy(update={"trade_id": last.trade_id + 20, "price": 1e300, "qty": 1e300}).dumps()),
        (key, last.dumps().replace(b'"BTCUSDT"', b'"' + b"B" * 1_000_100 + b'"')),
        (key, last.dumps().replace(b'"price":' + str(last.price).encode(), b'"price":-0.0')),
        ("binance:BTCUSDT\u20ac".encode(), last.model_copy(update={"symbol": "BTCUSDT\u20ac"}).dumps()),
        ("binance:\u0411TCUSDT".encode(), last.model_copy(update={"symbol": "\u0411TCUSDT"}).dumps()),
    ]
    messages: list[tuple[bytes | None, bytes]] = []
    for i in range(BARS):
        for sym in SYMBOLS:
            messages.append(batch_of(bar_trades("binance", sym, rows[sym][i])))
            if sym == "BTCUSDT" and i == 30:
                messages += poison
    worker = start_worker(settings, tmp_path)
    try:
        asyncio.run(send_raw(settings, settings.topic_trades, messages))
        bar_msgs = asyncio.run(read_topic(settings, settings.topic_bars, lambda m: len(m) >= 2 * (BARS - 1)))
        letters = asyncio.run(read_topic(settings, settings.topic_deadletter, lambda m: len(m) >= 6))
        final = {(sym, int(rows[sym][BARS - 2, TS])) for sym in SYMBOLS}  # each market's last forecast
        preds = asyncio.run(read_topic(settings, settings.topic_predictions,
                                       lambda m: {(p.symbol, p.bar_ts) for p in map(Prediction.loads,
                                                                                    (x.value for x in m))} >= final))
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]

    bars: dict[str, dict[int, Bar]] = {s: {} for s in SYMBOLS}
    for m in bar_msgs:
        b = Bar.loads(m.value)
        bars[b.symbol][b.ts] = b
    for sym in SYMBOLS:
        got = sorted(bars[sym].values(), key=lambda b: b.ts)
        want = rows[sym][: BARS - 1]
        assert [b.ts for b in got] == [int(t) for t in want[:, TS]]
        np.testing.assert_allclose([[b.open, b.high, b.low, b.close, b.volume] for b in got], want[:, 1:6],
                                   rtol=1e-9)
        # The 2^62 id is a venue reset (and the next trade one back): taken as a trade of its minute.
        assert [b.trades for b in got] == [5 if (sym, i) == ("BTCUSDT", 30) else 4 for i in range(BARS - 1)]
    reasons = sorted(DeadLetter.loads(m.value).reason.split(":")[0] for m in letters)
    assert reasons == ["future", "invalid", "overflow", "oversized", "unknown_symbol", "unknown_symbol"]
    assert all(len(DeadLetter.loads(m.value).reason) < 300 for m in letters)
    assert {Prediction.loads(m.value).symbol for m in preds} == set(SYMBOLS)


def trade_frame(symbol: str, trade_id: int, price: float | str, qty: float | str, ts: int) -> str:
    data = {"e": "trade", "E": ts, "s": symbol, "t": trade_id, "p": str(price), "q": str(qty), "T": ts,
            "m": trade_id % 3 == 0, "M": True}
    return orjson.dumps({"stream": f"{symbol.lower()}@trade", "data": data}).decode()


def test_exchange_producer_fed_poison_then_normal_trades_every_normal_trade_becomes_bars(served, tmp_path):
    """The issue's proof: frames dated 2100, with id 2^62, with price and qty 1e300, then 1,000 normal
    trades of two symbols through the exchange producer; the worker turns every normal trade into bars."""
    settings, _ = served()
    start = (int(time.time() * 1000) // 60_000 - 10) * 60_000  # ten minutes ago, on a minute boundary
    rng = np.random.default_rng(3)
    normal: dict[str, list[tuple[int, float, float, int]]] = {}
    for sym, price in (("BTCUSDT", 30_000.0), ("ETHUSDT", 2_000.0)):
        prices = price * np.exp(np.cumsum(rng.normal(0, 1e-4, 500)))
        normal[sym] = [(1_000 + i, round(float(p), 2), round(float(q), 5), start + i * 700)
                       for i, (p, q) in enumerate(zip(prices, rng.uniform(0.001, 2.0, 500)))]
    b100 = normal["BTCUSDT"][100]
    frames = [trade_frame("BTCUSDT", *t) for t in normal["BTCUSDT"][:101]]
    frames += [
        trade_frame("BTCUSDT", b100[0] + 1, b100[1], 1.0, YEAR_2100_MS),
        trade_frame("BTCUSDT", 2**62, b100[1], "0.000000001", b100[3]),  # a venue reset, both ways
        trade_frame("BTCUSDT", b100[0] + 1, "1e300", "1e300", b100[3]),
    ]
    frames += [trade_frame("BTCUSDT", *t) for t in normal["BTCUSDT"][101:]]
    frames += [trade_frame("ETHUSDT", *t) for t in normal["ETHUSDT"]]

    async def produce() -> None:
        async def handler(ws: websockets.ServerConnection) -> None:
            for frame in frames:
                await ws.send(frame)
            await ws.wait_closed()

        server = await websockets.serve(handler, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            async with Publisher(settings) as publisher, asyncio.timeout(120):
                producer = ExchangeProducer(settings, publisher, BINANCE, url, ["btcusdt", "ethusdt"], ["trade"])
                stop = asyncio.Event()
                task = asyncio.create_task(producer.run(stop))
                while producer.stats.trades < 1001:
                    await asyncio.sleep(0.05)
                stop.set()
                stats = await task
        finally:
            server.close()
        assert (stats.trades, stats.dead_letters, stats.resets, stats.gaps) == (1001, 2, 2, 0)

    worker = start_worker(settings, tmp_path)
    minutes = {s: sorted({t[3] // 60_000 * 60_000 for t in normal[s]}) for s in SYMBOLS}
    try:
        asyncio.run(produce())
        want = sum(len(m) - 1 for m in minutes.values())  # the last minute of each stays open
        bar_msgs = asyncio.run(read_topic(settings, settings.topic_bars, lambda m: len(m) >= want))
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]
    bars: dict[str, dict[int, Bar]] = {s: {} for s in SYMBOLS}
    for m in bar_msgs:
        b = Bar.loads(m.value)
        bars[b.symbol][b.ts] = b
    for sym in SYMBOLS:
        assert sorted(bars[sym]) == minutes[sym][:-1]
        for ts, bar in bars[sym].items():
            mine = [t for t in normal[sym] if t[3] // 60_000 * 60_000 == ts]
            extra = 1 if sym == "BTCUSDT" and ts == b100[3] // 60_000 * 60_000 else 0  # the 2^62 trade
            assert bar.trades == len(mine) + extra
            assert (bar.open, bar.close) == (mine[0][1], mine[-1][1])  # the 2^62 trade has trade 100's price
            assert bar.high == max(t[1] for t in mine) and bar.low == min(t[1] for t in mine)
            assert abs(bar.volume - sum(t[2] for t in mine) - 1e-9 * extra) <= 1e-9 * bar.volume

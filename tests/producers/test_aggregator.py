"""The aggregator poller against a local CoinGecko-style server replaying real bars, with 429s,
a 500 and malformed bodies; trades land on the real embedded broker."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from chaincast.models.history import CLOSE, TS, load_bars
from chaincast.producers.aggregator import (VENUE, Malformed, Quote, QuoteTrades, parse_market_chart,
                                            parse_simple_price, run_aggregator)
from chaincast.producers.aggregator_server import QUOTE_OFFSET_MS, FakeAggregator
from chaincast.stream.records import DeadLetter, Trade
from tests.conftest import TEST_DATA
from tests.integration.conftest import read_topic

IDS = {"BTCUSDT": "bitcoin", "ETHUSDT": "ethereum"}
START = 120  # minutes of history before the first polled minute
SECRET = "cg-secret-key-0123456789"


def bars() -> dict:
    return {s: load_bars(TEST_DATA / "market" / f"binance_{s}_1m_2023-03.csv.gz")[:400] for s in IDS}


def test_simple_price_refuses_each_malformed_coin_alone() -> None:
    body = (b'{"bitcoin": {"usd": "NaN", "last_updated_at": 1}, '
            b'"ethereum": {"usd": 1800.5, "last_updated_at": 1680307260}}')
    quotes, bad = parse_simple_price(body, IDS)
    assert quotes == [Quote("ETHUSDT", 1800.5, 1680307260000, None)]
    assert bad == [("BTCUSDT", "malformed: bitcoin.usd is not a number: 'NaN'")]
    for junk in (b'{"bitcoin": ', b"[1, 2]", b'"text"'):
        with pytest.raises(Malformed):
            parse_simple_price(junk, IDS)
    with pytest.raises(Malformed):
        parse_market_chart(b'{"prices": [[1, -3.0]]}', "BTCUSDT")


def test_quotes_without_trade_ids_become_monotonic_trades() -> None:
    qt = QuoteTrades("BTCUSDT")
    trades = []
    for q in (Quote("BTCUSDT", 10.0, 60_000, 1440.0 * 10), Quote("BTCUSDT", 10.0, 60_000),
              Quote("BTCUSDT", 9.5, 30_000), Quote("BTCUSDT", 9.0, 119_000)):
        if (t := qt.trade(q)) is not None:
            qt.sent(t)
            trades.append(t)
    assert [(t.trade_id, t.price, t.side, t.exchange) for t in trades] == [(60_000, 10.0, "buy", VENUE),
                                                                           (119_000, 9.0, "sell", VENUE)]
    assert trades[0].qty == pytest.approx(1.0)  # 24 h quote volume / price / 1440
    assert trades[1].qty == pytest.approx(1e-8)  # no volume given: a token size


def test_poller_replays_real_quotes_backs_off_and_dead_letters(settings_for, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    data = bars()
    faults = {2: "truncated", 3: "429", 6: "nan", 8: "missing", 9: "500", 11: "wrong_type"}
    fake = FakeAggregator(data, IDS, start=START, faults=faults)

    async def run(polls: int, settings) -> object:  # noqa: ANN001
        return await run_aggregator(settings, asyncio.Event(), polls=polls)

    async def scenario() -> tuple:
        await fake.start_serving()
        try:
            settings = settings_for(CHAINCAST_AGGREGATOR_URL=fake.url, CHAINCAST_AGGREGATOR_API_KEY=SECRET,
                                    CHAINCAST_AGGREGATOR_RATE_PER_MIN="6000", CHAINCAST_AGGREGATOR_INTERVAL_S="0.01",
                                    CHAINCAST_HOME=str(tmp_path / "home"))
            first = await run(8, settings)
            again = await run(1, settings)  # a restart resumes from the checkpoint: nothing sent twice
            trades = await read_topic(settings, settings.topic_trades, lambda m: len(m) >= 125 + 7 + 2)
            letters = await read_topic(settings, settings.topic_deadletter, lambda m: len(m) >= 4)
            return first, again, trades, letters
        finally:
            await fake.stop()

    caplog.set_level(logging.INFO, logger="websockets.server")  # the fake server's own header dump is not ours
    with caplog.at_level(logging.DEBUG):  # every client-side logger (httpx, httpcore, chaincast) at its most verbose
        first, again, msgs, letters = asyncio.run(scenario())

    trades = [Trade.loads(m.value) for m in msgs]
    by_symbol = {s: [t for t in trades if t.symbol == s] for s in IDS}
    minutes = {"BTCUSDT": [*range(START), 120, 121, 123, 125, 127, 128],
               "ETHUSDT": [120, 121, 122, 123, 124, 125, 127, 128]}
    for sym, expected in minutes.items():
        got = by_symbol[sym]
        assert [t.trade_id for t in got] == [int(data[sym][i, TS]) + QUOTE_OFFSET_MS for i in expected]
        assert [t.price for t in got] == [float(data[sym][i, CLOSE]) for i in expected]  # the real closes
        assert all(m.key.decode() == f"{VENUE}:{sym}" for m in msgs if Trade.loads(m.value).symbol == sym)
    assert first.published == len(trades) - 2 and again.published == 2
    reasons = sorted(DeadLetter.loads(m.value).reason.split(":")[0] for m in letters)
    assert reasons == ["malformed", "malformed", "malformed", "missing"]
    assert fake.served["429"] == 1 and fake.served["500"] == 1  # both retried, the polls went on
    assert fake.api_keys == {SECRET}  # sent to the server ...
    assert SECRET not in caplog.text  # ... and never logged

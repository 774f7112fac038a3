"""The whole path on real parts: replay -> broker -> worker (bars, predict) -> Redis + topics.

A real Tansu broker, a real Valkey server, a real worker process, a real day of
bars. Bars must equal the OHLCV of the file, predictions must land in Redis and
on the topic, malformed inputs in the dead-letter topic, and a worker killed
with SIGKILL mid-replay must, once restarted, finish with the same bars and
exactly one history entry per prediction.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import redis
from aiokafka.partitioner import DefaultPartitioner

from chaincast.models.history import CLOSE, HIGH, LOW, OPEN, TS, VOLUME
from chaincast.producers.replay import replay
from chaincast.models.serving import Forecaster
from chaincast.stream import kafka_options
from chaincast.stream.bars import BarBuilder
from chaincast.stream.market import MarketState
from chaincast.stream.predict import forecast, history_size, push, ready
from chaincast.stream.records import Bar, Block, DeadLetter, Prediction, Trade, TradeBatch
from chaincast.stream.redis_layout import RedisLayout
from tests.conftest import TEST_DATA
from tests.integration.conftest import DAY, day_of, markets, read_all, read_topic, send_raw, start_worker

SYMBOLS = ("BTCUSDT", "ETHUSDT")
CLOSED_PER_SYMBOL = DAY - 1  # the day's last bar stays open: no later trade closes it


def bars_by_symbol(messages) -> dict[str, dict[int, Bar]]:
    out: dict[str, dict[int, Bar]] = {s: {} for s in SYMBOLS}
    for m in messages:
        bar = Bar.loads(m.value)
        seen = out[bar.symbol].get(bar.ts)
        assert seen is None or seen == bar, "a re-emitted bar must be identical"
        out[bar.symbol][bar.ts] = bar
    return out


def all_bars(messages) -> bool:
    return sum(1 for _ in {(Bar.loads(m.value).symbol, Bar.loads(m.value).ts) for m in messages}) >= \
        len(SYMBOLS) * CLOSED_PER_SYMBOL


def assert_bars_match_file(bars: dict[str, dict[int, Bar]]) -> None:
    for sym in SYMBOLS:
        rows = day_of(sym)[:CLOSED_PER_SYMBOL]
        got = np.array([[b.ts, b.open, b.high, b.low, b.close, b.volume] for _, b in sorted(bars[sym].items())])
        np.testing.assert_allclose(got, rows[:, [TS, OPEN, HIGH, LOW, CLOSE, VOLUME]], rtol=1e-9)


def expected_predictions(settings) -> int:
    # Every closed bar with a full, gap-free window behind it gets one forecast (the bundled day has no gap).
    return CLOSED_PER_SYMBOL - history_size(settings.window) + 1


def mainnet_blocks_retimed(start_s: int, n: int = 60) -> list[Block]:
    """Real mainnet blocks (number, base fee, gas, tx count) moved onto the replayed day's clock."""
    series = json.loads((TEST_DATA / "chain" / "blocks_24337593_24338592.json").read_text())[:n]
    t0 = series[0]["timestamp"]
    return [Block(chain_id=1, number=b["number"], hash=f"0x{b['number']:064x}", parent_hash=f"0x{b['number'] - 1:064x}",
                  timestamp=start_s + b["timestamp"] - t0, base_fee=b["base_fee_per_gas"], gas_used=b["gas_used"],
                  gas_limit=b["gas_limit"], tx_count=b["transaction_count"]) for b in series]


def two_hop_forecasts(bars: dict[str, dict[int, Bar]], entry, window: int) -> dict[tuple[str, int], Prediction]:
    """What the former predict agent (bars.1m -> window -> forecast) makes of the published bars,
    with the band calibrated live the way the worker does (stream.market.MarketState.calibrate)."""
    model = Forecaster.load(entry.onnx_path, expected_sha256=entry.sha256)
    out = {}
    for sym, by_ts in bars.items():
        rows: list[list[float]] = []
        state = MarketState(BarBuilder("binance", sym))
        for _, bar in sorted(by_ts.items()):
            push(rows, bar, history_size(window))
            if (r := ready(bar, rows, window, arrived=0.0)) is not None:
                (p,), _ = forecast(model, [r])
                out[(sym, p.bar_ts)] = state.calibrate(p, r.closes())
    return out


def test_replayed_day_becomes_bars_predictions_and_dead_letters(served, tmp_path):
    settings, entry = served("ema_drift")  # a forecast that moves with the window
    blocks = mainnet_blocks_retimed(int(day_of("BTCUSDT")[0, TS]) // 1000)
    asyncio.run(send_raw(settings, settings.topic_blocks, [(b"1", b.dumps()) for b in blocks]))
    good = Trade(exchange="binance", symbol="BTCUSDT", trade_id=1, price=1.0, qty=1.0, side="buy", ts_event=0)
    asyncio.run(send_raw(settings, settings.topic_trades, [
        (b"binance:BTCUSDT", b"\x00\xffnot json"),
        (b"binance:BTCUSDT", TradeBatch(exchange="binance", symbol="BTCUSDT", trades=[good]).dumps()
         .replace(b'"price":1.0', b'"price":NaN')),
        (b"binance:XRPUSDT", good.model_copy(update={"symbol": "XRPUSDT"}).dumps()),
    ]))
    worker = start_worker(settings, tmp_path)
    try:
        asyncio.run(replay(settings, markets()))
        bar_msgs = asyncio.run(read_topic(settings, settings.topic_bars, all_bars))
        n = expected_predictions(settings)
        pred_msgs = asyncio.run(read_topic(settings, settings.topic_predictions, lambda m: len(m) >= 2 * n))
        letters = asyncio.run(read_topic(settings, settings.topic_deadletter, lambda m: len(m) >= 3, timeout=30))
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]

    bars = bars_by_symbol(bar_msgs)
    assert_bars_match_file(bars)
    txs_by_minute: dict[int, int] = {}
    for b in blocks:
        minute = b.timestamp * 1000 // 60_000 * 60_000
        txs_by_minute[minute] = txs_by_minute.get(minute, 0) + b.tx_count
    for sym in SYMBOLS:  # bars carry the chain activity of their minute
        joined = {ts: bar.chain.tx_count for ts, bar in bars[sym].items() if bar.chain is not None}
        assert joined == txs_by_minute

    preds = [Prediction.loads(m.value) for m in pred_msgs]
    assert len(preds) == 2 * n
    # One hop makes exactly the forecasts the two-hop path made: recomputed here from the bars
    # the worker published (batched inference may differ from batch-1 in float32's last bits).
    two_hop = two_hop_forecasts(bars, entry, settings.window)
    assert sorted(two_hop) == sorted((p.symbol, p.bar_ts) for p in preds)
    cols = ("y_hat", "q10", "q50", "q90", "price", "price_hat")
    np.testing.assert_allclose([[getattr(p, c) for c in cols] for p in preds],
                               [[getattr(two_hop[(p.symbol, p.bar_ts)], c) for c in cols] for p in preds],
                               rtol=1e-6, atol=1e-9)
    assert len({round(p.y_hat, 12) for p in preds}) > 100  # the forecasts do depend on the window
    assert {p.model_version for p in preds} == {entry.version}
    for p in preds:
        assert p.q10 <= p.q50 <= p.q90 and np.isfinite(p.y_hat) and p.price_hat > 0
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    for sym in SYMBOLS:
        last_bar_ts = int(day_of(sym)[CLOSED_PER_SYMBOL - 1, TS])
        latest = r.hgetall(RedisLayout.of(settings).latest(sym))
        assert int(latest["bar_ts"]) == last_bar_ts and latest["model_version"] == entry.version
        assert r.xlen(RedisLayout.of(settings).history(sym)) == n
    assert r.hget(RedisLayout.of(settings).model(settings.model_name), "version") == entry.version

    reasons = sorted(DeadLetter.loads(m.value).reason.split(":")[0] for m in letters)
    assert reasons == ["invalid", "invalid", "unknown_symbol"]
    assert all(DeadLetter.loads(m.value).source == "stream.markets" for m in letters)

    # A market's state is logged on its trades' (and bars') partition number, so the worker that is
    # given the market recovers its state with it (measured before: BTCUSDT's on partition 0, its trades on 1).
    every = list(range(settings.partitions))
    for table in ("markets", "windows", "scores"):
        records = asyncio.run(read_all(settings, f"{settings.app_id}-{table}-changelog"))
        assert {m.key for m in records} == {f"binance:{sym}".encode() for sym in SYMBOLS}, table
        assert {(m.key, m.partition) for m in records} == {
            (key, DefaultPartitioner()(key, every, every)) for key in {m.key for m in records}}, table


# Once xfail on the embedded broker ("trades never reach the agent although the broker holds them
# all"); the cause was Faust, not the broker, and it also failed once on Apache Kafka in CI. The
# restarted worker's fetcher had moved past records Faust fetched and dropped at the rebalance's
# pause, and Faust's seek to the committed offset leaves a never-committed partition where the
# fetcher is: measured, the restarted worker began ETHUSDT's trades at offset 798 instead of 0.
# stream.kafka_options._Consumer resumes a rebalance's partitions only once seeked, and seeks a
# never-committed one to 0 (issue 12's "seek-to-0 vs beginning_offsets()" experiment, made the fix).
@pytest.mark.slow
def test_worker_killed_mid_replay_recovers_from_changelogs(served, tmp_path):
    settings, _ = served()
    worker = start_worker(settings, tmp_path)
    try:
        async def replay_and_crash() -> None:
            job = asyncio.create_task(replay(settings, markets(), speed=None))
            await read_topic(settings, settings.topic_bars, lambda m: len(m) >= 400)
            worker.kill()  # SIGKILL: no clean shutdown, no final commit
            await job
            await asyncio.sleep(kafka_options.restart_delay_s(settings))  # as `chaincast up` would

        asyncio.run(replay_and_crash())
        worker = start_worker(settings, tmp_path)
        bar_msgs = asyncio.run(read_topic(settings, settings.topic_bars, all_bars, timeout=180))
        n = expected_predictions(settings)
        r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        # Distinct forecasts, not messages: the redone batches' forecasts are on the topic twice, so a
        # message count is reached while the last forecasts are still being made.
        asyncio.run(read_topic(settings, settings.topic_predictions,
                               lambda m: len({(x.key, Prediction.loads(x.value).bar_ts) for x in m}) >= 2 * n,
                               timeout=180))
    finally:
        worker.stop()

    assert_bars_match_file(bars_by_symbol(bar_msgs))
    for sym in SYMBOLS:  # idempotent history: exactly one entry per forecast bar despite redelivery
        assert r.xlen(RedisLayout.of(settings).history(sym)) == n

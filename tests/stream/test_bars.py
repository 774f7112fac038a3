"""The bar builder against real data: bars rebuilt from replayed trades equal the file's OHLCV."""

from __future__ import annotations

import numpy as np
import pytest

from chaincast.models.history import CLOSE, HIGH, LOW, OPEN, TS, VOLUME, load_bars
from chaincast.producers.synth import bar_trades
from chaincast.stream.bars import BarBuilder, Refused, parse_trades
from chaincast.stream.records import Trade, TradeBatch
from tests.conftest import PROJECT_DATA

SYMBOLS = frozenset({"BTCUSDT", "ETHUSDT"})


def real_bars(n: int = 600) -> np.ndarray:
    return load_bars(PROJECT_DATA / "BTCUSDT-1m-2023-04-01_07.csv.gz")[:n]


def test_bars_from_replayed_trades_equal_the_file():
    rows = real_bars()
    builder = BarBuilder("binance", "BTCUSDT")
    closed = [bar for row in rows for t in bar_trades("binance", "BTCUSDT", row) for bar in builder.add(t)]
    assert len(closed) == len(rows) - 1  # the last bar stays open until a later trade arrives
    got = np.array([[b.ts, b.open, b.high, b.low, b.close, b.volume] for b in closed])
    want = rows[:-1, [TS, OPEN, HIGH, LOW, CLOSE, VOLUME]]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert all(b.trades == 4 and b.low <= b.vwap <= b.high for b in closed)


def test_state_round_trips_through_the_table_format():
    rows = real_bars(5)
    a, b = BarBuilder("binance", "BTCUSDT"), None
    for row in rows:
        for t in bar_trades("binance", "BTCUSDT", row):
            b = BarBuilder.from_dict((b or a).to_dict())
            assert b.add(t) == a.add(t)


def test_duplicates_and_late_trades_are_refused_without_changing_the_bar():
    trades = bar_trades("binance", "BTCUSDT", real_bars(1)[0])
    builder = BarBuilder("binance", "BTCUSDT")
    for t in trades:
        builder.add(t)
    before = builder.to_dict()
    with pytest.raises(Refused, match="^duplicate"):
        builder.add(trades[1])
    late = trades[0].model_copy(update={"trade_id": 10**12, "ts_event": trades[0].ts_event - 60_000})
    with pytest.raises(Refused, match="^late"):
        builder.add(late)
    assert builder.to_dict() == before


def test_redelivered_closing_trade_re_emits_the_bar():
    rows = real_bars(2)
    builder = BarBuilder("binance", "BTCUSDT")
    first = [bar for t in bar_trades("binance", "BTCUSDT", rows[0]) for bar in builder.add(t)]
    closer = bar_trades("binance", "BTCUSDT", rows[1])[0]
    closed = builder.add(closer)
    assert first == [] and len(closed) == 1
    assert builder.add(closer) == closed  # the crash window: state saved, bar maybe not sent


def batch(**over) -> bytes:
    t = Trade(exchange="binance", symbol="BTCUSDT", trade_id=1, price=10.0, qty=1.0, side="buy", ts_event=0)
    return TradeBatch(exchange="binance", symbol="BTCUSDT", trades=[t.model_copy(update=over)]).dumps()


@pytest.mark.parametrize(
    ("raw", "key", "reason"),
    [
        (b"\xff\xfe not json", b"binance:BTCUSDT", "invalid"),
        (b'{"exchange": "binance"}', b"binance:BTCUSDT", "invalid"),
        (batch(price=-1.0), b"binance:BTCUSDT", "invalid"),
        (batch().replace(b'"price":10.0', b'"price":NaN'), b"binance:BTCUSDT", "invalid"),
        (batch(qty=0.0), b"binance:BTCUSDT", "invalid"),
        (batch().replace(b"BTCUSDT", b"DOGEUSDT"), b"binance:DOGEUSDT", "unknown_symbol"),
        (batch(), b"binance:ETHUSDT", "bad_key"),
        (batch(), None, "bad_key"),
        (b"x" * 2000, b"binance:BTCUSDT", "oversized"),
        (None, b"binance:BTCUSDT", "invalid"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(raw, key, reason):
    with pytest.raises(Refused) as exc:
        parse_trades(raw, key, SYMBOLS, max_bytes=1000)
    assert str(exc.value).startswith(reason + ":")


def test_single_trades_and_batches_parse():
    one = Trade(exchange="binance", symbol="ETHUSDT", trade_id=7, price=2.0, qty=1.0, side="sell", ts_event=5)
    assert parse_trades(one.dumps(), b"binance:ETHUSDT", SYMBOLS, 10_000) == [one]
    assert len(parse_trades(batch(), b"binance:BTCUSDT", SYMBOLS, 10_000)) == 1

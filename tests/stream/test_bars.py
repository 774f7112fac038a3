"""The bar builder against real data: bars rebuilt from replayed trades equal the file's OHLCV."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chaincast.models.history import CLOSE, HIGH, LOW, OPEN, TS, VOLUME, load_bars
from chaincast.producers.synth import bar_trades
from chaincast.stream.bars import BarBuilder, Duplicate, Refused, parse_trades
from chaincast.stream.bounds import Bounds
from chaincast.stream.market import MarketState
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
    with pytest.raises(Duplicate, match="^duplicate"):
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


# --- bounds: one poisonous record never stops a market ---------------------------------------

BOUNDS = Bounds(max_clock_skew_ms=300_000, max_id_jump=1_000_000)


def fold_day(poison: list[tuple[int, Trade]], n: int = 30) -> tuple[MarketState, list, list[str]]:
    """Fold ``n`` real bars of trades with ``poison`` inserted before the i-th trade; return
    (state, closed bars, refusal reasons)."""
    trades = [t for row in real_bars(n) for t in bar_trades("binance", "BTCUSDT", row)]
    for i, bad in sorted(poison, key=lambda p: p[0], reverse=True):
        trades.insert(i, bad)
    state = MarketState(BarBuilder("binance", "BTCUSDT"))
    out = state.fold(trades, BOUNDS)
    return state, out.closed, [reason for _, reason in out.refused]


def good_bars(n: int = 30) -> list:
    state, closed, refused = fold_day([], n)
    assert not refused
    return closed


def test_a_trade_dated_2100_or_overflowing_is_refused_and_the_market_goes_on():
    first = bar_trades("binance", "BTCUSDT", real_bars(1)[0])[0]
    future = first.model_copy(update={"trade_id": first.trade_id + 3, "ts_event": 4_102_444_800_000})
    huge = first.model_copy(update={"trade_id": first.trade_id + 5, "price": 1e300, "qty": 1e300})
    _, closed, reasons = fold_day([(3, future), (40, huge)])
    assert [r.split(":")[0] for r in reasons] == ["future", "overflow"]
    assert closed == good_bars()


def test_summed_volume_that_would_overflow_is_refused():
    t = Trade(exchange="binance", symbol="BTCUSDT", trade_id=1, price=1e-300, qty=1.7e308, side="buy", ts_event=0)
    state = MarketState(BarBuilder("binance", "BTCUSDT"))
    out = state.fold([t, t.model_copy(update={"trade_id": 2}), t.model_copy(update={"trade_id": 3, "qty": 1.0})],
                     BOUNDS)
    assert [r for _, r in out.refused] == ["overflow: bar volume would not be finite"]
    assert state.bars.bar.trades == 2 and state.bars.last_trade_id == 3


def test_an_id_jump_beyond_the_bound_is_a_venue_reset_not_a_wedge():
    rows = real_bars(30)
    trades = [t for row in rows for t in bar_trades("binance", "BTCUSDT", row)]
    jump = trades[10].model_copy(update={"trade_id": 2**62, "qty": 0.5})
    state = MarketState(BarBuilder("binance", "BTCUSDT"))
    out = state.fold(trades[:11] + [jump] + trades[11:], BOUNDS)
    # Two resets (up to 2^62, back down): every later trade folds in, none is a "duplicate".
    assert out.duplicates == 0 and not out.refused
    assert len(out.closed) == len(rows) - 1
    ref = good_bars()
    touched = next(i for i, b in enumerate(ref) if b.ts == jump.ts_event - jump.ts_event % 60_000)
    for i, (got, want) in enumerate(zip(out.closed, ref)):
        if i == touched:  # the jumped trade is a trade like any other of its minute
            assert got.trades == want.trades + 1 and got.volume == pytest.approx(want.volume + 0.5)
        else:
            assert got == want


def test_a_refused_trade_never_moves_the_id_position_even_across_a_reset():
    trades = bar_trades("binance", "BTCUSDT", real_bars(2)[1])
    state = MarketState(BarBuilder("binance", "BTCUSDT"))
    state.fold(trades)
    before = json.dumps(state.entry())
    late = trades[0].model_copy(update={"trade_id": 2**62, "ts_event": trades[0].ts_event - 120_000})
    out = state.fold([late], BOUNDS)
    assert [r.split(":")[0] for _, r in out.refused] == ["late"] and json.dumps(state.entry()) == before


def test_redelivered_trades_are_counted_as_duplicates_not_refused():
    trades = bar_trades("binance", "BTCUSDT", real_bars(1)[0])
    state = MarketState(BarBuilder("binance", "BTCUSDT"))
    state.fold(trades, BOUNDS)
    out = state.fold(trades, BOUNDS)
    assert out.duplicates == len(trades) and not out.refused and not out.closed
    with pytest.raises(Duplicate):
        state.bars.add(trades[0])

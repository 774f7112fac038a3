"""The Binance normaliser against recorded real sessions (golden outputs) and the documented payloads."""

from __future__ import annotations

import json

import pytest
from tests.producers.wire_recordings import RECORDINGS, WIRE, golden, normalised

from chaincast.producers import binance
from chaincast.producers.venue import BadMessage, Control, Kline
from chaincast.stream.records import Trade


@pytest.mark.parametrize("name", [n for n, (_, venue) in RECORDINGS.items() if venue == "binance"])
def test_recorded_sessions_match_golden(name: str) -> None:
    recording, venue = RECORDINGS[name]
    assert [json.loads(json.dumps(o, sort_keys=True)) for o in normalised(recording, venue)] == golden(name)


def nautilus(name: str) -> dict:
    return json.loads((WIRE / "nautilus" / name).read_text())


def test_spot_trade_combined_wrapper() -> None:
    t = binance.normalise(nautilus("ws_spot_trade.json"), 7)
    assert t == Trade(exchange="binance", symbol="ETHUSDT", trade_id=705291099, price=4149.74, qty=0.4387,
                      side="sell", ts_event=1639351062243, ts_ingest=7)  # m=true: the buyer made, the taker sold


def test_raw_agg_trade_uses_the_aggregate_id() -> None:
    t = binance.normalise(nautilus("futures_agg_trade_stream.json"))
    assert (t.trade_id, t.price, t.qty, t.side, t.ts_event) == (5933014, 0.001, 100.0, "sell", 123456785)


def test_klines_open_and_closed() -> None:
    closed = binance.normalise(nautilus("futures_kline_stream_closed.json"))
    opened = binance.normalise(nautilus("futures_kline_stream_open.json"))
    assert isinstance(closed, Kline) and closed.closed and not opened.closed
    bar = closed.bar
    assert (bar.ts, bar.interval_ms, bar.open, bar.high, bar.low, bar.close) == (1638747660000, 60000, 0.001, 0.0025, 0.001, 0.002)
    assert (bar.volume, bar.buy_volume, bar.trades, bar.first_trade_id, bar.last_trade_id) == (1000, 500, 100, 100, 200)
    assert bar.vwap == pytest.approx(1.0 / 1000)


def test_controls() -> None:
    assert binance.normalise({"result": None, "id": 1}) == Control("ack")
    assert binance.normalise({"stream": "!serverShutdown", "data": {"e": "serverShutdown", "E": 1}}) == Control("shutdown")


GOOD = {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 5, "p": "100.5", "q": "0.1", "T": 1, "m": False, "M": True}


@pytest.mark.parametrize(("frame", "kind"), [
    (b"not json{", "json"),
    ("[1, 2]", "field"),
    (json.dumps({"stream": "btcusdt@trade", "data": "x"}), "field"),
    (json.dumps(nautilus("ws_spot_ticker_book.json")), "event"),
    (json.dumps({**GOOD, "e": "depthUpdate"}), "event"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "p"}), "field"),
    (json.dumps({**GOOD, "t": "5"}), "field"),
    (json.dumps({**GOOD, "t": True}), "field"),
    (json.dumps({**GOOD, "m": "no"}), "field"),
    (json.dumps({**GOOD, "p": "NaN"}), "value"),
    (json.dumps({**GOOD, "p": "-1"}), "value"),
    (json.dumps({**GOOD, "q": "0"}), "value"),
    (json.dumps({**GOOD, "q": "inf"}), "value"),
    (json.dumps({**GOOD, "p": "12,5"}), "field"),
    ("x" * 3000, "size"),
])
def test_bad_frames_are_refused_with_a_reason(frame: str | bytes, kind: str) -> None:
    with pytest.raises(BadMessage) as err:
        binance.normalise(binance.decode(frame, 2048))
    assert err.value.kind == kind and err.value.reason.startswith(f"{kind}: ")


def test_backfill_expands_aggregates_over_trade_ids() -> None:
    rows = [{"a": 10, "p": "5", "q": "3", "f": 100, "l": 102, "T": 9, "m": True, "M": True},
            {"a": 11, "p": "6", "q": "1", "f": 103, "l": 103, "T": 10, "m": False, "M": True}]
    trades, next_page = binance.backfill_trades("btcusdt", rows, False, after_id=100, before_id=104)
    assert [(t.trade_id, t.price, t.qty, t.side) for t in trades] == [(101, 5.0, 1.0, "sell"), (102, 5.0, 1.0, "sell"),
                                                                       (103, 6.0, 1.0, "buy")]
    assert next_page is None
    by_agg, _ = binance.backfill_trades("btcusdt", rows, True, after_id=10, before_id=12)
    assert [t.trade_id for t in by_agg] == [11]

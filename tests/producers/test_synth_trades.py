"""A bar replayed as four trades: the contract the local exchange and the CSV replay share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chaincast.models.history import CLOSE, HIGH, LOW, OPEN, TS, VOLUME, load_bars
from chaincast.producers.synth import ZERO_VOLUME_QTY, bar_trades

DAY = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "binance_export" / "ETHUSDT-1m-2022-08-14.csv.gz"


def test_a_real_day_of_bars_as_trades() -> None:
    bars = load_bars(DAY)
    trades = [t for row in bars for t in bar_trades("binance", "ethusdt", row)]
    ids = [t.trade_id for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(trades)))  # contiguous: no false gaps between bars
    for row, four in zip(bars, np.array(trades, dtype=object).reshape(-1, 4)):
        ts = int(row[TS])
        assert all(ts <= t.ts_event < ts + 60_000 for t in four)
        assert [t.ts_event for t in four] == sorted({t.ts_event for t in four})
        prices = [t.price for t in four]
        assert (prices[0], max(prices), min(prices), prices[-1]) == (row[OPEN], row[HIGH], row[LOW], row[CLOSE])
        assert sum(t.qty for t in four) == pytest.approx(row[VOLUME], rel=1e-12)
        assert {t.symbol for t in four} == {"ETHUSDT"}


def test_candle_order_and_sides() -> None:
    up = bar_trades("binance", "X", [0, 10, 12, 9, 11, 4])
    down = bar_trades("binance", "X", [0, 10, 12, 9, 9.5, 4])
    assert [t.price for t in up] == [10, 9, 12, 11] and [t.price for t in down] == [10, 12, 9, 9.5]
    assert [t.side for t in down] == ["buy", "buy", "sell", "buy"]


def test_deterministic_and_zero_volume() -> None:
    row = [1_660_435_200_000, 1, 1, 1, 1, 0.0]
    assert bar_trades("binance", "X", row) == bar_trades("binance", "X", row)
    assert [t.qty for t in bar_trades("binance", "X", row)] == [ZERO_VOLUME_QTY] * 4

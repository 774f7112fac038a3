"""Bars whose returns are predictable (mean-reverting AR(1)): a learned model really beats persistence.

Real 1-minute returns are close to a random walk, so on real data a challenger that
beats persistence significantly is luck; these bars make "a better challenger" deterministic.
"""

from __future__ import annotations

import numpy as np

from chaincast.models.history import BAR_COLUMNS, BUY_VOLUME, CLOSE, HIGH, LOW, OPEN, TRADES, TS, VOLUME
from chaincast.stream.records import Bar

START_TS = 1_680_307_200_000  # 2023-04-01 00:00 UTC


def ar_bars(n: int, phi: float = -0.5, seed: int = 0, start_ts: int = START_TS, sigma: float = 1e-3) -> np.ndarray:
    """``n`` contiguous 1-minute bars (models.history layout) with AR(1) log returns."""
    rng = np.random.default_rng(seed)
    eps = rng.normal(0.0, sigma, n)
    ret = np.zeros(n)
    for i in range(1, n):
        ret[i] = phi * ret[i - 1] + eps[i]
    close = 100.0 * np.exp(np.cumsum(ret))
    out = np.zeros((n, len(BAR_COLUMNS)))
    out[:, TS] = start_ts + np.arange(n) * 60_000
    out[:, OPEN] = np.concatenate([[100.0], close[:-1]])
    out[:, CLOSE] = close
    wick = np.abs(rng.normal(0.0, sigma / 2, n))
    out[:, HIGH] = np.maximum(out[:, OPEN], close) * (1 + wick)
    out[:, LOW] = np.minimum(out[:, OPEN], close) * (1 - wick)
    out[:, VOLUME] = rng.uniform(5.0, 15.0, n)
    out[:, TRADES] = rng.integers(10, 100, n)
    out[:, BUY_VOLUME] = out[:, VOLUME] * rng.uniform(0.3, 0.7, n)
    return out


def to_bars(symbol: str, rows: np.ndarray, exchange: str = "binance") -> list[Bar]:
    return [Bar(exchange=exchange, symbol=symbol, ts=int(r[TS]), open=r[OPEN], high=r[HIGH], low=r[LOW],
                close=r[CLOSE], volume=r[VOLUME], trades=int(r[TRADES]), buy_volume=r[BUY_VOLUME],
                vwap=(r[HIGH] + r[LOW] + r[CLOSE]) / 3) for r in rows]

"""From bars to Predictions: the rolling window per market and one batched inference.

The agent is the loop around these; they run without a broker in unit tests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from chaincast.models.features import WARMUP, window_tensor
from chaincast.models.history import CLOSE, TS
from chaincast.models.serving import Forecaster
from chaincast.stream.records import Bar, Prediction


def bar_row(bar: Bar) -> list[float]:
    """A Bar as one row of ``models.history.BAR_COLUMNS``."""
    return [float(bar.ts), bar.open, bar.high, bar.low, bar.close, bar.volume, float(bar.trades), bar.buy_volume]


def history_size(window: int, max_horizon: int = 1) -> int:
    """Bars a market must keep so that the feature window is complete, and that the outcome of
    the longest horizon (bars t .. t + h) can be realised for the live calibration."""
    return max(window + WARMUP, max_horizon + 1)


def push(rows: list[list[float]], bar: Bar, size: int) -> bool:
    """Append a bar to a market's rows (kept at ``size``); False for a bar older than the last.

    The same bar again (a redelivery) replaces the last row and counts as
    accepted, so its prediction is made again and written idempotently.

    >>> rows = []
    >>> b = lambda ts: Bar(exchange="x", symbol="X", ts=ts, open=1, high=1, low=1, close=1, volume=1,
    ...                    trades=1, vwap=1)
    >>> push(rows, b(0), 2), push(rows, b(60_000), 2), push(rows, b(60_000), 2), push(rows, b(120_000), 2)
    (True, True, True, True)
    >>> push(rows, b(0), 2)
    False
    >>> [r[0] for r in rows]
    [60000.0, 120000.0]
    """
    if rows and bar.ts < rows[-1][0]:
        return False
    if rows and bar.ts == rows[-1][0]:
        rows.pop()
    rows.append(bar_row(bar))
    del rows[:-size]
    return True


@dataclass(frozen=True)
class Ready:
    """A bar whose market has a full window: the input of one inference row."""

    bar: Bar
    x: np.ndarray  # (1, T, F), the base feature group
    arrived: float  # time.perf_counter() when the bar reached the predict agent
    rows: np.ndarray | None = None  # (N, 8) the market's bars up to this one (stream.predict.bar_row)

    def x_for(self, model: Forecaster) -> np.ndarray | None:
        """The window in ``model``'s feature groups (None when they cannot be computed here)."""
        if model.groups == ("base",) or self.rows is None:
            return self.x
        return window_tensor(self.rows, model.window, model.groups)

    def closes(self) -> dict[int, float]:
        """Bar open time -> close of the market's bars up to this one (what outcomes are realised from)."""
        if self.rows is None:
            return {self.bar.ts: self.bar.close}
        return dict(zip(self.rows[:, TS].astype(np.int64).tolist(), self.rows[:, CLOSE].tolist()))


def ready(bar: Bar, rows: Sequence[Sequence[float]], window: int, arrived: float) -> Ready | None:
    array = np.asarray(rows, dtype=np.float64)
    x = window_tensor(array, window)
    return None if x is None else Ready(bar, x, arrived, array)


# A log return beyond this is not a forecast of a 1-minute market but a broken model.
MAX_ABS_OUTPUT = 20.0


def forecast(model: Forecaster, batch: Sequence[Ready]) -> tuple[list[Prediction], list[Bar]]:
    """One inference for all markets whose bars closed together: (predictions, bars whose
    model output was not finite or absurd — refused, never written)."""
    xs = [r.x_for(model) for r in batch]
    # A window the model's feature groups cannot fill is skipped, as ``ready`` skips a gap.
    batch = [r for r, x in zip(batch, xs) if x is not None]
    if not batch:
        return [], []
    y = model.predict(np.concatenate([x for x in xs if x is not None]))  # (B, 4): y_hat, q10, q50, q90
    ok = np.isfinite(y).all(axis=1) & (np.abs(np.nan_to_num(y, nan=np.inf)) <= MAX_ABS_OUTPUT).all(axis=1)
    now = time.time()
    target = str(model.card.get("target", "log_return"))
    out = []
    refused = [r.bar for r, good in zip(batch, ok) if not good]
    for r, (y_hat, q10, q50, q90) in zip([r for r, good in zip(batch, ok) if good], y[ok].tolist()):
        bar = r.bar
        out.append(Prediction(
            exchange=bar.exchange, symbol=bar.symbol, bar_ts=bar.ts, horizon=model.horizon,
            target=target, y_hat=y_hat, q10=q10, q50=q50, q90=q90, price=bar.close,
            price_hat=bar.close * math.exp(y_hat) if target == "log_return" else None, model_name=model.name,
            model_version=model.version, created_at=int(now * 1000),
            latency_ms=(time.perf_counter() - r.arrived) * 1000,
        ))
    return out, refused

"""Rolling windows and batched forecasts: a broken model output is refused, never written."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from chaincast.models.history import load_bars
from chaincast.stream.predict import forecast, history_size, push, ready
from chaincast.stream.records import Bar
from tests.conftest import PROJECT_DATA


@dataclass
class FixedOutputs:
    """A stand-in served model whose outputs the test chooses (the ONNX path is tested in tests/models)."""

    outputs: np.ndarray
    name: str = "m"
    version: str = "v1"
    horizon: int = 1
    groups: tuple = ("base",)
    card: dict = field(default_factory=lambda: {"target": "log_return"})

    def predict(self, x: np.ndarray) -> np.ndarray:
        assert x.shape[0] == len(self.outputs)
        return self.outputs


def windows(symbols: tuple[str, ...], window: int = 8):
    rows = load_bars(PROJECT_DATA / "BTCUSDT-1m-2023-04-01_07.csv.gz")[: history_size(window)]
    out = []
    for sym in symbols:
        kept: list[list[float]] = []
        bar = None
        for r in rows:
            bar = Bar(exchange="binance", symbol=sym, ts=int(r[0]), open=r[1], high=r[2], low=r[3], close=r[4],
                      volume=r[5], trades=4, vwap=r[4])
            push(kept, bar, history_size(window))
        out.append(ready(bar, kept, window, arrived=time.perf_counter()))
    assert all(r is not None for r in out)
    return out


def test_forecast_refuses_non_finite_and_absurd_rows_and_keeps_the_rest():
    batch = windows(("BTCUSDT", "ETHUSDT", "SOLUSDT"))
    outputs = np.array([[0.001, -0.01, 0.0, 0.01], [np.nan, 0, 0, 0], [50.0, 0, 0, 0]], dtype=np.float32)
    preds, refused = forecast(FixedOutputs(outputs), batch)
    assert [p.symbol for p in preds] == ["BTCUSDT"] and [b.symbol for b in refused] == ["ETHUSDT", "SOLUSDT"]
    p = preds[0]
    assert abs(p.price_hat - p.price * np.exp(p.y_hat)) < 1e-9 * p.price and p.model_version == "v1"

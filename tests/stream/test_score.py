"""Live scoring state: joins in either order, no double counting, one retrain request per version."""

from __future__ import annotations

import json
import math

from chaincast.stream.records import Bar, Prediction
from chaincast.stream.scoring import KEEP_VERSIONS, MarketScore


def bar(ts: int, close: float) -> Bar:
    return Bar(exchange="x", symbol="X", ts=ts, open=close, high=close, low=close, close=close, volume=1,
               trades=1, vwap=close)


def pred(ts: int, y_hat: float, version: str = "v1", price: float = 100.0) -> Prediction:
    return Prediction(exchange="x", symbol="X", bar_ts=ts, horizon=1, y_hat=y_hat, q10=y_hat - 0.01, q50=y_hat,
                      q90=y_hat + 0.01, price=price, price_hat=price * math.exp(y_hat), model_name="m",
                      model_version=version, created_at=0, latency_ms=0)


def test_prediction_before_or_after_its_bar_scores_the_same() -> None:
    a, b = MarketScore({}, window=10), MarketScore({}, window=10)
    a.on_prediction(pred(0, 0.001))
    first = a.on_bar(bar(60_000, 101.0)).stats[0]
    b.on_bar(bar(60_000, 101.0))
    second = b.on_prediction(pred(0, 0.001)).stats[0]
    assert first == second
    y = math.log(1.01)
    assert math.isclose(first.mae, abs(y - 0.001)) and math.isclose(first.mae_persistence, y)
    assert first.skill > 0 and first.coverage_80 == 1.0  # y is inside the ±0.01 band


def test_redelivered_prediction_counts_once_and_state_is_json() -> None:
    ms = MarketScore({}, window=10)
    ms.on_bar(bar(60_000, 100.5))
    ms.on_prediction(pred(0, 0.0))
    assert ms.on_prediction(pred(0, 0.0)).stats == []
    assert ms.stats("v1").n == 1
    again = MarketScore(json.loads(json.dumps(ms.state)), window=10)  # what the table's changelog holds
    assert again.stats("v1") == ms.stats("v1")


def test_negative_live_skill_over_a_full_window_asks_once_per_version() -> None:
    ms = MarketScore({}, window=5)
    asks = []
    for i in range(12):
        ms.on_bar(bar((i + 1) * 60_000, 100.0 * (1.001 if i % 2 else 0.999)))
        asks.append(ms.on_prediction(pred(i * 60_000, 0.01)).retrain)  # always wrong by a lot
    assert [a is not None for a in asks].count(True) == 1 and asks.index(next(a for a in asks if a)) == 4
    assert ms.on_prediction(pred(12 * 60_000, 0.01, version="v2")).retrain is None  # a new version starts over


def test_versions_are_bounded() -> None:
    ms = MarketScore({}, window=5)
    dropped = []
    for i in range(KEEP_VERSIONS + 2):
        ms.on_bar(bar((i + 1) * 60_000, 100.0))
        dropped += ms.on_prediction(pred(i * 60_000, 0.0, version=f"v{i}")).dropped
    assert dropped == ["v0", "v1"] and list(ms.scores) == [f"v{i}" for i in range(2, KEEP_VERSIONS + 2)]

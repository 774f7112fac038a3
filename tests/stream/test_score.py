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
    assert ms.stats("log_return:h1", "v1").n == 1
    again = MarketScore(json.loads(json.dumps(ms.state)), window=10)  # what the table's changelog holds
    assert again.stats("log_return:h1", "v1") == ms.stats("log_return:h1", "v1")


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
    assert dropped == [("log_return:h1", "v0"), ("log_return:h1", "v1")]
    assert ms.versions("log_return:h1") == [f"v{i}" for i in range(2, KEEP_VERSIONS + 2)]


def vol_pred(ts: int, y_hat: float, horizon: int = 2, version: str = "vol1") -> Prediction:
    return Prediction(exchange="x", symbol="X", bar_ts=ts, horizon=horizon, target="volatility", y_hat=y_hat,
                      q10=y_hat * 0.5, q50=y_hat, q90=y_hat * 1.5, price=100.0, model_name="m-volatility-2",
                      model_version=version, created_at=0, latency_ms=0)


def test_volatility_is_realised_as_its_own_target_against_last_h_bars_realised_volatility() -> None:
    closes = [100.0, 101.0, 100.0, 102.0, 101.0]  # bars 0..4
    ms = MarketScore({}, window=10, max_horizon=2)
    for i, c in enumerate(closes[:3]):
        ms.on_bar(bar(i * 60_000, c))
    assert ms.on_prediction(vol_pred(2 * 60_000, 0.01)).stats == []  # bars 3 and 4 not closed yet
    assert ms.on_bar(bar(3 * 60_000, closes[3])).stats == []
    (st,) = ms.on_bar(bar(4 * 60_000, closes[4])).stats
    r = [math.log(closes[i + 1] / closes[i]) for i in range(4)]
    realised = math.sqrt((r[2] ** 2 + r[3] ** 2) / 2)  # bars 2 -> 4
    persistence = math.sqrt((r[0] ** 2 + r[1] ** 2) / 2)  # the realised volatility of bars 0 -> 2
    assert st.forecaster == "volatility:h2" and st.version == "vol1" and st.n == 1
    assert math.isclose(st.mae, abs(realised - 0.01)) and math.isclose(st.mae_persistence, abs(realised - persistence))
    assert st.coverage_80 == float(0.005 <= realised <= 0.015)


def test_forecasters_are_scored_apart_and_each_retrain_request_names_its_forecaster() -> None:
    ms = MarketScore({}, window=3, max_horizon=2)
    asks: dict[str, str] = {}
    for i in range(12):
        asks |= ms.on_bar(bar(i * 60_000, 100.0 * (1.01 if i % 2 else 1.0))).retrain or {}
        for p in (pred(i * 60_000, 0.0), vol_pred(i * 60_000, 1.0)):  # persistence's return, an absurd volatility
            asks |= ms.on_prediction(p).retrain or {}
    assert ms.forecasters() == ["log_return:h1", "volatility:h2"]
    assert ms.stats("log_return:h1", "v1").skill == 0.0  # persistence against itself
    assert ms.stats("volatility:h2", "vol1").skill < 0
    assert list(asks) == ["volatility:h2"]


def test_a_state_of_the_former_format_starts_over() -> None:
    old = {"closes": {"0": 1.0}, "pending": [[0, 1, 0.0, -1, 1, 100.0, "v1"]], "scored": [], "scores": {"v1": []}}
    ms = MarketScore(old, window=5)
    assert ms.pending == [] and ms.scores == {} and ms.closes == {}

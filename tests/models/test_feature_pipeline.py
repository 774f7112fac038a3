"""Features, targets and splits on tiny hand-checked examples and on a real slice."""

from __future__ import annotations

import numpy as np
import pytest

from chaincast.models.dataset import make_splits, samples
from chaincast.models.features import FEATURES, RET, WARMUP, bar_features, contiguous_run, window_tensor
from chaincast.models.history import BAR_COLUMNS, BUY_VOLUME, CLOSE, HIGH, LOW, MINUTE_MS, OPEN, TS, VOLUME
from chaincast.models.rolling import RollingMean, RollingRMS, rolling_mean, rolling_rms
from chaincast.models.targets import make_target
from tests.models.model_fixtures import btc_2023, btc_slice  # noqa: F401 (pytest fixtures)


def _bars(closes: list[float] | np.ndarray, ts: np.ndarray | None = None) -> np.ndarray:
    n = len(closes)
    b = np.full((n, len(BAR_COLUMNS)), np.nan)
    b[:, TS] = np.arange(n) * MINUTE_MS if ts is None else ts
    b[:, CLOSE] = closes
    b[:, OPEN] = np.concatenate([[closes[0]], closes[:-1]])
    b[:, HIGH] = np.maximum(b[:, OPEN], b[:, CLOSE]) * 1.001
    b[:, LOW] = np.minimum(b[:, OPEN], b[:, CLOSE]) * 0.999
    b[:, VOLUME] = 5.0
    return b


def test_hand_checked_row() -> None:
    closes = 100.0 * np.exp(np.cumsum(np.r_[0.0, np.tile([0.01, -0.02], 20)]))
    b = _bars(closes)
    b[:, BUY_VOLUME] = 4.0
    b[-1, VOLUME] = 20.0  # a busier last bar
    f = bar_features(b)
    last = f[-1].astype(np.float64)
    assert last[RET] == pytest.approx(-0.02, abs=1e-6)
    assert last[FEATURES.index("body")] == pytest.approx(-0.02, abs=1e-6)  # open = previous close
    assert last[FEATURES.index("buy_ratio")] == pytest.approx(4.0 / b[-1, VOLUME], abs=1e-6)
    rets = np.diff(np.log(closes))
    assert last[FEATURES.index("vol_short")] == pytest.approx(np.sqrt(np.mean(rets[-10:] ** 2)), rel=1e-5)
    assert last[FEATURES.index("vol_long")] == pytest.approx(np.sqrt(np.mean(rets[-30:] ** 2)), rel=1e-5)
    lv = np.log1p(b[:, VOLUME])
    assert last[FEATURES.index("log_volume_rel")] == pytest.approx(lv[-1] - lv[-30:].mean(), rel=1e-5)


def test_rows_are_causal(btc_slice: np.ndarray) -> None:
    """Row i computed from bars[: i + 1] equals row i computed from the whole series."""
    full = bar_features(btc_slice[:300])
    for i in (WARMUP, WARMUP + 1, 123, 299):
        np.testing.assert_array_equal(bar_features(btc_slice[: i + 1])[-1], full[i])


def test_gap_restarts_the_warmup() -> None:
    ts = np.arange(100) * MINUTE_MS
    ts[60:] += 5 * MINUTE_MS  # five missing minutes before row 60
    f = bar_features(_bars(np.linspace(100, 110, 100), ts))
    valid = np.isfinite(f).all(axis=1)
    assert contiguous_run(ts)[60] == 1
    assert valid[WARMUP:60].all() and not valid[60 : 60 + WARMUP].any() and valid[60 + WARMUP :].all()
    assert window_tensor(_bars(np.linspace(100, 110, 100), ts)[:70], 8) is None  # window would cross the gap
    x = window_tensor(_bars(np.linspace(100, 110, 100), ts), 8)
    assert x is not None and x.shape == (1, 8, len(FEATURES)) and x.dtype == np.float32
    assert window_tensor(_bars(np.linspace(100, 110, 20)), 8) is None  # not enough history


def test_buy_ratio_unknown_is_half_and_zero_volume_is_safe() -> None:
    b = _bars(np.linspace(100, 101, 40))
    b[-1, VOLUME] = 0.0
    f = bar_features(b)
    assert f[-1, FEATURES.index("buy_ratio")] == 0.5 and np.isfinite(f[-1]).all()


def test_rolling_objects_match_vectorised() -> None:
    x = np.random.default_rng(1).standard_normal(50)
    m, r = RollingMean(7), RollingRMS(7)
    for i, v in enumerate(x):
        m.update(v)
        r.update(v)
        if i >= 6:
            assert m.get() == pytest.approx(rolling_mean(x, 7)[i])
            assert r.get() == pytest.approx(rolling_rms(x, 7)[i])


def test_targets_never_cross_a_gap() -> None:
    ts = np.array([0, 1, 2, 4, 5, 6]) * MINUTE_MS
    b = _bars([100, 101, 102, 103, 104, 105], ts)
    y = make_target(b, 2)
    assert np.isfinite(y).tolist() == [True, False, False, True, False, False]
    assert y[0] == pytest.approx(np.log(102 / 100))
    with pytest.raises(ValueError):
        make_target(b, 1, "price")


def test_samples_and_time_ordered_splits(btc_slice: np.ndarray) -> None:
    s = samples(btc_slice, 16, 1, "log_return")
    assert s.x.shape[1:] == (16, len(FEATURES)) and np.isfinite(s.x).all()
    i = 100  # sample i is the window ending at its ts, its target the next bar
    row = int(np.searchsorted(btc_slice[:, TS], s.ts[i]))
    np.testing.assert_array_equal(s.x[i], bar_features(btc_slice)[row - 15 : row + 1])
    assert s.y[i] == pytest.approx(np.log(btc_slice[row + 1, CLOSE] / btc_slice[row, CLOSE]), rel=1e-6)

    sp = make_splits([btc_slice], 16, horizon=5, target="log_return")
    assert sp.train.ts.max() + 5 * MINUTE_MS <= sp.val.ts.min()  # embargo: targets never overlap
    assert sp.val.ts.max() + 5 * MINUTE_MS <= sp.test.ts.min()
    assert np.all(np.diff(sp.train.ts) > 0)

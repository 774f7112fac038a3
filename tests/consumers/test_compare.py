"""The promotion rule and the Diebold-Mariano test on hand-made losses."""

from __future__ import annotations

import numpy as np

from chaincast.consumers.bar_history import BarHistory
from chaincast.consumers.compare import MIN_DM_POINTS, decide, dm_pvalue
from tests.consumers.synth import ar_bars, to_bars


def _preds(y_hat: np.ndarray) -> np.ndarray:
    """A forecast whose band collapses onto its point: the interval score then follows the point error."""
    return np.column_stack([y_hat, y_hat, y_hat, y_hat])


def test_a_real_edge_is_significant_and_a_noisy_one_is_not() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(0, 1e-3, 400)
    zero = np.zeros((400, 4))
    assert decide(y, _preds(y * 0.5), zero, zero, margin=0.0, alpha=0.1).reason == "promoted"
    # Against persistence: half a unit better on a quarter of the rows, 0.45 worse on another quarter.
    y = np.tile([1.0, -1.0], 200)
    y_hat = np.zeros(400)
    y_hat[0::4], y_hat[2::4] = 0.5 * y[0::4], -0.45 * y[2::4]
    d = decide(y, _preds(y_hat), None, zero, margin=0.0, alpha=0.1)
    assert not d.promote and d.reason == "not_significant" and d.p_value > 0.1


def test_few_points_skip_the_test_but_not_the_margin() -> None:
    y = np.full(MIN_DM_POINTS - 1, 0.01)
    champ, chal, zero = _preds(np.full(len(y), 0.005)), _preds(np.full(len(y), 0.009)), np.zeros((len(y), 4))
    d = decide(y, chal, champ, zero, margin=0.1, alpha=0.01)
    assert d.promote and d.p_value is None
    assert decide(y, champ, champ, zero, margin=0.0, alpha=1.0).reason == "below_margin"  # a tie does not win


def test_dm_accounts_for_overlapping_horizons() -> None:
    rng = np.random.default_rng(1)
    a, b = np.abs(rng.normal(0, 1, 300)), np.abs(rng.normal(0, 0.9, 300))
    assert 0 <= dm_pvalue(a, b, horizon=1) <= 1 and 0 <= dm_pvalue(a, b, horizon=5) <= 1
    assert dm_pvalue(a, a) == 1.0  # identical losses: never significant


def test_bar_history_is_bounded_sorted_and_ignores_redelivery() -> None:
    bars = to_bars("AAA", ar_bars(50))
    h = BarHistory(max_bars=20)
    assert sum(h.add(b) for b in bars[:40]) == 40
    assert sum(h.add(b) for b in bars[30:40]) == 0  # redelivered held bars are not new
    assert sum(h.add(b) for b in bars[40:][::-1]) == 10  # late ones are sorted into place
    arr = h.arrays()["AAA"]
    assert len(arr) == 20 and np.all(np.diff(arr[:, 0]) == 60_000) and arr[-1, 0] == bars[-1].ts

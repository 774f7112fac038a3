"""Champion vs challenger on one validation slice: scores, a Diebold-Mariano test, the decision.

Pure functions on arrays so the rule can be read and tested without a broker:
a challenger is promoted only when its MAE beats the champion's by the margin,
beats persistence, and (with enough points) the loss difference against the
champion is significant under a one-sided Diebold-Mariano test.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

MIN_DM_POINTS = 30  # below this the DM statistic's normal approximation is not trusted


@dataclass(frozen=True)
class SliceScore:
    mae: float
    skill: float  # 1 - MAE / MAE_persistence on the same rows
    coverage_80: float
    rows: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def score(y: np.ndarray, pred: np.ndarray, persistence: np.ndarray) -> SliceScore:
    """Scores of ``pred`` (N, 4) on targets ``y`` (N,) beside the persistence forecast (N, 4).

    >>> y = np.array([0.01, -0.01, 0.02, 0.0])
    >>> s = score(y, np.tile([[0.0, -0.05, 0.0, 0.05]], (4, 1)), np.zeros((4, 4)))
    >>> s.skill, s.coverage_80, s.rows
    (0.0, 1.0, 4)
    """
    err = np.abs(y - pred[:, 0])
    mae_p = float(np.mean(np.abs(y - persistence[:, 0])))
    mae = float(np.mean(err))
    same = np.array_equal(pred[:, 0], persistence[:, 0])
    return SliceScore(
        mae=mae,
        skill=0.0 if same or mae_p == 0 else 1.0 - mae / mae_p,
        coverage_80=float(np.mean((y >= pred[:, 1]) & (y <= pred[:, 3]))),
        rows=len(y),
    )


def dm_pvalue(loss_a: np.ndarray, loss_b: np.ndarray, horizon: int = 1) -> float:
    """One-sided Diebold-Mariano p-value for "b has lower expected loss than a".

    d = loss_a - loss_b; a Newey-West variance with ``horizon - 1`` lags (h-step
    forecasts overlap) and the Harvey-Leybourne-Newbold small-sample factor.
    Uses the normal tail (no scipy here); the HLN factor already shrinks the statistic.

    >>> rng = np.random.default_rng(0)
    >>> a = np.abs(rng.normal(0, 1.0, 500)); b = np.abs(rng.normal(0, 0.5, 500))
    >>> dm_pvalue(a, b) < 0.01, dm_pvalue(b, a) > 0.99
    (True, True)
    """
    d = np.asarray(loss_a, dtype=np.float64) - np.asarray(loss_b, dtype=np.float64)
    n = len(d)
    if n < 2:
        return 1.0
    mean = float(d.mean())
    centred = d - mean
    var = float(centred @ centred) / n
    for lag in range(1, min(horizon, n)):
        var += 2 * (1 - lag / horizon) * float(centred[lag:] @ centred[:-lag]) / n
    if var <= 0:
        return 0.0 if mean > 0 else 1.0
    stat = mean / math.sqrt(var / n)
    stat *= math.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
    return 0.5 * math.erfc(stat / math.sqrt(2))  # P(Z > stat)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str  # "promoted" or why not: a bounded metric label
    p_value: float | None = None


def decide(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None, persistence: np.ndarray,
           margin: float, alpha: float, horizon: int = 1) -> Decision:
    """The promotion rule; predictions are (N, 4) on the same rows ``y`` (N,).

    With no champion (a first start), the challenger is judged against persistence alone.

    >>> y = np.array([0.01, -0.01] * 50)
    >>> good, bad, zero = np.tile([0.009, 0, 0, 0], (100, 1)), np.tile([-0.02, 0, 0, 0], (100, 1)), np.zeros((100, 4))
    >>> good[1::2, 0] = -0.009
    >>> decide(y, good, bad, zero, margin=0.05, alpha=0.1).reason
    'promoted'
    >>> decide(y, bad, good, zero, margin=0.0, alpha=0.1).reason
    'worse_than_persistence'
    """
    if len(y) == 0:
        return Decision(False, "no_validation_rows")
    loss_c = np.abs(y - challenger[:, 0])
    loss_p = np.abs(y - persistence[:, 0])
    if loss_c.mean() >= loss_p.mean():
        return Decision(False, "worse_than_persistence")
    loss_ref = loss_p if champion is None else np.abs(y - champion[:, 0])
    if loss_c.mean() >= loss_ref.mean() * (1 - margin):
        return Decision(False, "below_margin")
    if len(y) < MIN_DM_POINTS:
        return Decision(True, "promoted")
    p = dm_pvalue(loss_ref, loss_c, horizon)
    if p > alpha:
        return Decision(False, "not_significant", p)
    return Decision(True, "promoted", p)

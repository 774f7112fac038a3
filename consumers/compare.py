"""Champion vs challenger on one validation slice: scores, a Diebold-Mariano test, the decision.

Pure functions on arrays so the rule can be read and tested without a broker.
A challenger is promoted only when, on the newest bars it never trained on:

1. its point loss (MAE for returns, QLIKE for volatility) beats the honest
   reference (persistence for returns, HAR-RV for volatility);
2. it beats the champion (or, on a first start, the reference) by the margin;
3. its 80 % band is no worse by interval score (a sharper point with a
   useless band does not serve);
4. with enough points, a one-sided Diebold-Mariano test finds the loss
   difference significant. The test runs on PER-MINUTE losses averaged
   across symbols: rows of the same minute are correlated (BTC and ETH move
   together), and counting them as independent overstates the evidence;
5. at a level that shrinks with every round the champion survives
   (alpha spending: round k of a champion's reign tests at
   alpha / (k (k + 1)), which sums to alpha), so frequent rounds cannot
   promote a no-edge challenger by trying often.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from chaincast.models.evaluate import interval_score, qlike_rows

MIN_DM_POINTS = 30  # below this the DM statistic's normal approximation is not trusted


@dataclass(frozen=True)
class SliceScore:
    mae: float
    skill: float  # 1 - MAE / MAE_persistence on the same rows
    coverage_80: float
    rows: int
    interval_score_80: float = 0.0
    qlike: float | None = None  # volatility forecasts only

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def score(y: np.ndarray, pred: np.ndarray, persistence: np.ndarray, target: str = "log_return") -> SliceScore:
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
        interval_score_80=float(np.mean(interval_score(y, pred[:, 1], pred[:, 3]))) if len(y) else 0.0,
        qlike=float(np.mean(qlike_rows(y, pred[:, 0]))) if target == "volatility" and len(y) else None,
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


def minute_means(loss: np.ndarray, ts: np.ndarray | None) -> np.ndarray:
    """Loss per minute averaged across symbols, in time order (rows of one minute are one observation).

    >>> minute_means(np.array([1.0, 3.0, 5.0]), np.array([60_000, 60_000, 120_000])).tolist()
    [2.0, 5.0]
    """
    if ts is None:
        return np.asarray(loss, dtype=np.float64)
    _, inverse = np.unique(ts, return_inverse=True)
    return np.bincount(inverse, weights=loss) / np.bincount(inverse)


def spent_alpha(alpha: float, round_index: int) -> float:
    """The level of round ``round_index`` (1 = the first round against this champion).

    >>> [round(spent_alpha(0.1, k), 4) for k in (1, 2, 10)]
    [0.05, 0.0167, 0.0009]
    """
    k = max(int(round_index), 1)
    return alpha / (k * (k + 1))


def point_loss(y: np.ndarray, pred: np.ndarray, target: str) -> np.ndarray:
    """MAE rows for returns, QLIKE rows for volatility: the loss the gate compares."""
    return qlike_rows(y, pred[:, 0]) if target == "volatility" else np.abs(y - pred[:, 0])


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str  # "promoted" or why not: a bounded metric label
    p_value: float | None = None


def decide(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None, reference: np.ndarray,
           margin: float, alpha: float, horizon: int = 1, target: str = "log_return",
           ts: np.ndarray | None = None, round_index: int = 1) -> Decision:
    """The promotion rule; predictions are (N, 4) on the same rows ``y`` (N,), ``ts`` their bar times.

    ``reference`` is persistence for returns and HAR for volatility. With no
    champion (a first start) the challenger is judged against the reference.
    The margin is relative for MAE and absolute (nats) for QLIKE, whose values can be negative.

    >>> y = np.array([0.01, -0.01] * 50)
    >>> good, bad, zero = np.tile([0.009, 0, 0, 0], (100, 1)), np.tile([-0.02, 0, 0, 0], (100, 1)), np.zeros((100, 4))
    >>> good[1::2, 0] = -0.009
    >>> decide(y, good, bad, zero, margin=0.05, alpha=0.1).reason
    'promoted'
    >>> decide(y, bad, good, zero, margin=0.0, alpha=0.1).reason
    'worse_than_reference'
    """
    if len(y) == 0:
        return Decision(False, "no_validation_rows")
    loss_c = point_loss(y, challenger, target)
    loss_r = point_loss(y, reference, target)
    if loss_c.mean() >= loss_r.mean():
        return Decision(False, "worse_than_reference")
    rival = reference if champion is None else champion
    loss_ref = loss_r if champion is None else point_loss(y, champion, target)
    need = loss_ref.mean() - margin if target == "volatility" else loss_ref.mean() * (1 - margin)
    if loss_c.mean() >= need:
        return Decision(False, "below_margin")
    band_c = interval_score(y, challenger[:, 1], challenger[:, 3]).mean()
    if band_c > interval_score(y, rival[:, 1], rival[:, 3]).mean():
        return Decision(False, "worse_band")
    a, b = minute_means(loss_ref, ts), minute_means(loss_c, ts)
    if len(a) < MIN_DM_POINTS:
        return Decision(True, "promoted")
    p = dm_pvalue(a, b, horizon)
    if p > spent_alpha(alpha, round_index):
        return Decision(False, "not_significant", p)
    return Decision(True, "promoted", p)

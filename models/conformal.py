"""Online adaptive conformal calibration of the q10..q90 band (Gibbs & Candes 2021, on a scale).

A model's band is stretched around its median by ``exp(log_scale)``; after
every realised target the scale moves: up by ``gamma * (1 - alpha)`` on a
miss, down by ``gamma * alpha`` on a hit, so the long-run miss rate tracks
``alpha`` (0.2 for the 80 % band) whatever the model got wrong, and it keeps
tracking when the market's volatility regime changes. One state per symbol
and forecaster; the stream and the backtest run this same object.

A forecast for h bars ahead is judged h bars later, so the band of row i
uses only outcomes known at i (the caller updates with each realised row).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

ALPHA = 0.2
GAMMA = 0.02  # step of log_scale per outcome: ~50 outcomes to move the band by e^(0.2)
MAX_LOG_SCALE = 5.0  # a broken model's band may grow 150-fold, not without bound


class AdaptiveConformal:
    """The band scale of one symbol and forecaster.

    >>> c = AdaptiveConformal(gamma=0.1)
    >>> c.band(0.0, -1.0, 1.0)
    (-1.0, 1.0)
    >>> c.update(5.0, -1.0, 0.0, 1.0)  # a miss widens the band
    >>> lo, hi = c.band(0.0, -1.0, 1.0); round(hi, 4)
    1.0833
    >>> for _ in range(20): c.update(0.0, -1.0, 0.0, 1.0)  # hits narrow it again
    >>> round(c.band(0.0, -1.0, 1.0)[1], 4)
    0.7261
    """

    def __init__(self, alpha: float = ALPHA, gamma: float = GAMMA, log_scale: float = 0.0) -> None:
        self.alpha, self.gamma, self.log_scale = alpha, gamma, log_scale

    def band(self, q50: float, q10: float, q90: float) -> tuple[float, float]:
        s = math.exp(self.log_scale)
        return q50 - s * (q50 - q10), q50 + s * (q90 - q50)

    def update(self, y: float, q10: float, q50: float, q90: float) -> None:
        """Fold one realised target ``y`` against the RAW band it was forecast with."""
        lo, hi = self.band(q50, q10, q90)
        miss = 0.0 if lo <= y <= hi else 1.0
        step = self.gamma * (miss - self.alpha)
        self.log_scale = min(max(self.log_scale + step, -MAX_LOG_SCALE), MAX_LOG_SCALE)


def calibrate(y: np.ndarray, pred: np.ndarray, horizon: int, state: AdaptiveConformal | None = None,
              ) -> tuple[np.ndarray, AdaptiveConformal]:
    """Calibrated copy of ``pred`` (N, 4) over one series' rows in time order.

    Row i's band uses the outcomes of rows < i - horizon + 1 only (they are
    realised by then). Returns the calibrated predictions and the state, to
    continue on the next rows (validation -> test, fold -> fold).

    >>> y = np.zeros(400); y[::2] = 3.0  # half the outcomes fall outside a +-1 band
    >>> p = np.tile([0.0, -1.0, 0.0, 1.0], (400, 1))
    >>> out, st = calibrate(y, p, 1)
    >>> float(np.mean((y[200:] >= out[200:, 1]) & (y[200:] <= out[200:, 3]))) >= 0.75
    True
    """
    state = state or AdaptiveConformal()
    out = pred.copy()
    pending: deque[int] = deque()
    for i in range(len(y)):
        while pending and pending[0] <= i - horizon:  # outcomes realised by row i
            j = pending.popleft()
            state.update(float(y[j]), float(pred[j, 1]), float(pred[j, 2]), float(pred[j, 3]))
        out[i, 1], out[i, 3] = state.band(float(pred[i, 2]), float(pred[i, 1]), float(pred[i, 3]))
        pending.append(i)
    for j in pending:  # the last rows' outcomes are known too, before the next fold starts
        state.update(float(y[j]), float(pred[j, 1]), float(pred[j, 2]), float(pred[j, 3]))
    return out, state

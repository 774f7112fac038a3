"""Rolling statistics: tiny update/get objects and their vectorised twins.

The objects (river style) document the arithmetic on a few numbers; the
vectorised functions compute the same thing over a whole series and are what
``models.features`` uses, for training and serving alike. A test checks the
two agree.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np


class RollingMean:
    """Mean of the last ``window`` values.

    >>> m = RollingMean(3)
    >>> for x in [1.0, 2.0, 3.0, 4.0]:
    ...     m.update(x)
    >>> m.get()
    3.0
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._values: deque[float] = deque()
        self._sum = 0.0

    def update(self, x: float) -> None:
        self._values.append(x)
        self._sum += x
        if len(self._values) > self.window:
            self._sum -= self._values.popleft()

    def get(self) -> float:
        """NaN until ``window`` values were seen: a short window is not the same statistic."""
        if len(self._values) < self.window:
            return math.nan
        return self._sum / self.window


class RollingRMS:
    """Root mean square of the last ``window`` values (realised volatility of returns).

    >>> v = RollingRMS(2)
    >>> v.update(3.0); v.get()
    nan
    >>> v.update(-4.0); round(v.get(), 4)  # sqrt((9 + 16) / 2)
    3.5355
    """

    def __init__(self, window: int) -> None:
        self._mean = RollingMean(window)

    def update(self, x: float) -> None:
        self._mean.update(x * x)

    def get(self) -> float:
        return math.sqrt(self._mean.get())


def rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` values; NaN where fewer are available.

    A NaN input poisons only the windows that contain it (no running cumsum).

    >>> rolling_mean(np.array([1.0, 2.0, 3.0, 4.0]), 3).tolist()
    [nan, nan, 2.0, 3.0]
    """
    out = np.full(len(x), np.nan)
    if len(x) >= window:
        out[window - 1 :] = np.lib.stride_tricks.sliding_window_view(x, window).mean(axis=1)
    return out


def rolling_rms(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing root mean square over ``window`` values.

    >>> rolling_rms(np.array([np.nan, 3.0, -4.0]), 2).round(4).tolist()
    [nan, nan, 3.5355]
    """
    return np.sqrt(rolling_mean(np.asarray(x, dtype=np.float64) ** 2, window))

"""What the models forecast, computed from bars at row i using only the future bars i+1..i+h.

- ``log_return``: log(close[i+h] / close[i]).
- ``volatility``: realised volatility of the next h one-bar returns,
  sqrt(mean(ret[i+1..i+h]^2)).

A target is NaN when those h bars are not contiguous minutes (a gap), so no
training row ever learns across missing data.
"""

from __future__ import annotations

import numpy as np

from chaincast.models.history import CLOSE, TS
from chaincast.models.timeunits import MINUTE_MS

TARGETS: tuple[str, ...] = ("log_return", "volatility")


def make_target(bars: np.ndarray, horizon: int, target: str = "log_return") -> np.ndarray:
    """Target (N,) float64 at each row; NaN where the next ``horizon`` bars are missing.

    >>> b = np.zeros((4, 8)); b[:, TS] = [0, 60_000, 120_000, 240_000]
    >>> b[:, CLOSE] = [100.0, 110.0, 99.0, 100.0]
    >>> make_target(b, 1).round(4).tolist()  # the last step spans a gap
    [0.0953, -0.1054, nan, nan]
    >>> make_target(b, 2, "volatility").round(4).tolist()
    [0.1005, nan, nan, nan]
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    n = len(bars)
    out = np.full(n, np.nan)
    if n <= horizon:
        return out
    ts, log_close = bars[:, TS], np.log(bars[:, CLOSE])
    ok = ts[horizon:] - ts[:-horizon] == horizon * MINUTE_MS  # sorted unique ts: no gap inside
    if target == "log_return":
        value = log_close[horizon:] - log_close[:-horizon]
    else:
        ret2 = np.diff(log_close) ** 2  # ret2[j] is the squared return from bar j to j+1
        value = np.sqrt(np.lib.stride_tricks.sliding_window_view(ret2, horizon).mean(axis=1))
    out[: n - horizon] = np.where(ok, value, np.nan)
    return out

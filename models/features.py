"""The one feature pipeline: bars -> model inputs, used by training AND serving.

Every feature of row ``i`` depends only on ``bars[: i + 1]`` and looks back at
most ``WARMUP`` bars. A row is valid only when those ``WARMUP + 1`` bars are
contiguous minutes, so no window ever spans a gap in the data: after a gap the
features restart from scratch, exactly as the stream would after an outage.

Features are left unscaled here on purpose: the mean/std fitted on the train
split live inside the exported model, so serving never refits anything.
"""

from __future__ import annotations

import numpy as np

from chaincast.models.history import BUY_VOLUME, CLOSE, HIGH, LOW, OPEN, TS, VOLUME
from chaincast.models.rolling import rolling_mean, rolling_rms
from chaincast.models.timeunits import MINUTE_MS

VOL_SHORT = 10  # bars of returns in the short realised volatility
VOL_LONG = 30  # bars of returns in the long realised volatility
VOLUME_WINDOW = 30  # bars the volume is compared with

FEATURES: tuple[str, ...] = (
    "ret",  # log(close_i / close_{i-1})
    "range",  # log(high / low): intrabar volatility
    "body",  # log(close / open)
    "log_volume_rel",  # log1p(volume) minus its mean over VOLUME_WINDOW bars: scale-free across symbols
    "buy_ratio",  # taker buy volume / volume; 0.5 when unknown or no volume
    "vol_short",  # root mean square of `ret` over VOL_SHORT bars
    "vol_long",  # root mean square of `ret` over VOL_LONG bars
)
RET = FEATURES.index("ret")

# vol_long needs VOL_LONG returns, the first of which needs one earlier close.
WARMUP: int = max(VOL_LONG, VOLUME_WINDOW - 1, VOL_SHORT)


def contiguous_run(ts: np.ndarray) -> np.ndarray:
    """Number of contiguous 1-minute bars ending at each row (itself included).

    >>> contiguous_run(np.array([0, 60_000, 120_000, 300_000, 360_000])).tolist()
    [1, 2, 3, 1, 2]
    """
    n = len(ts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    breaks = np.flatnonzero(np.diff(ts) != MINUTE_MS) + 1  # first row after each gap
    starts = np.zeros(n, dtype=np.int64)
    starts[breaks] = breaks
    starts = np.maximum.accumulate(starts)
    return np.arange(n, dtype=np.int64) - starts + 1


def bar_features(bars: np.ndarray) -> np.ndarray:
    """Features (N, len(FEATURES)) float32; NaN rows lack WARMUP contiguous bars.

    >>> from chaincast.models.history import BAR_COLUMNS
    >>> n = WARMUP + 2
    >>> bars = np.full((n, len(BAR_COLUMNS)), np.nan)
    >>> bars[:, TS] = np.arange(n) * 60_000.0
    >>> bars[:, OPEN:CLOSE + 1] = 100.0
    >>> bars[:, CLOSE] = 100.0 * np.exp(0.01 * (np.arange(n) % 2))  # close alternates 100, 101.005
    >>> bars[:, HIGH] = bars[:, CLOSE] + 1.0
    >>> bars[:, VOLUME] = 10.0
    >>> f = bar_features(bars)
    >>> bool(np.isnan(f[: WARMUP]).all()), bool(np.isfinite(f[WARMUP:]).all())
    (True, True)
    >>> [round(float(v), 4) for v in f[-1]]  # last close is 101.005 (ret +0.01), buy volume unknown
    [0.01, 0.0199, 0.01, 0.0, 0.5, 0.01, 0.01]
    """
    bars = np.asarray(bars, dtype=np.float64)
    n = len(bars)
    out = np.full((n, len(FEATURES)), np.nan)
    if n == 0:
        return out.astype(np.float32)
    close = bars[:, CLOSE]
    ret = np.full(n, np.nan)
    ret[1:] = np.log(close[1:] / close[:-1])
    volume = bars[:, VOLUME]
    log_volume = np.log1p(np.maximum(volume, 0.0))
    known = np.isfinite(bars[:, BUY_VOLUME]) & (volume > 0)
    buy_ratio = np.full(n, 0.5)
    buy_ratio[known] = np.clip(bars[known, BUY_VOLUME] / volume[known], 0.0, 1.0)

    out[:, 0] = ret
    out[:, 1] = np.log(bars[:, HIGH] / bars[:, LOW])
    out[:, 2] = np.log(close / bars[:, OPEN])
    out[:, 3] = log_volume - rolling_mean(log_volume, VOLUME_WINDOW)
    out[:, 4] = buy_ratio
    out[:, 5] = rolling_rms(ret, VOL_SHORT)
    out[:, 6] = rolling_rms(ret, VOL_LONG)

    # Rows whose look-back would reach across a gap are invalid, not approximated.
    out[contiguous_run(bars[:, TS]) <= WARMUP] = np.nan
    out[~np.isfinite(out).all(axis=1)] = np.nan
    return out.astype(np.float32)


def valid_windows(features: np.ndarray, window: int) -> np.ndarray:
    """Boolean (N,): True at row i when rows i-window+1..i are all valid.

    Valid rows are contiguous bars (see module docstring), so such a window
    never spans a gap.
    """
    finite = np.isfinite(features).all(axis=1)
    idx = np.arange(len(finite))
    last_bad = np.maximum.accumulate(np.where(finite, -1, idx)) if len(idx) else idx
    run = idx - last_bad  # consecutive valid rows ending at i
    return run >= window


def window_tensor(bars: np.ndarray, window: int) -> np.ndarray | None:
    """Model input (1, window, F) float32 from the last rows of ``bars``.

    None when the last ``window + WARMUP`` bars are not contiguous (a gap, or
    not enough history yet): the stream then skips the forecast.
    """
    need = window + WARMUP
    if len(bars) < need:
        return None
    feats = bar_features(np.asarray(bars)[-need:])[-window:]
    if not np.isfinite(feats).all():
        return None
    return feats[None, :, :]

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

from chaincast.models.history import (
    BASE_FEE_CHANGE, BUY_VOLUME, CHAIN_TX_COUNT, CLOSE, GAS_UTILISATION, HIGH, LOW, OPEN, TS, VOLUME,
)
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
RANGE = FEATURES.index("range")

# Switchable groups beyond one symbol's OHLCV ("base" is always on). A model's card
# records its groups; serving builds exactly those, or refuses the model.
GROUPS: dict[str, tuple[str, ...]] = {
    "base": FEATURES,
    # Time of day / week on a circle, so 23:59 sits next to 00:00.
    "time": ("tod_sin", "tod_cos", "dow_sin", "dow_cos"),
    # The leader's (first series', BTC by convention) return and short volatility at the same minute.
    "cross": ("lead_ret", "lead_vol_short"),
    # The chain features joined into bars at close (NaN-free only where the bars carry them).
    "chain": ("base_fee_change", "gas_utilisation", "log_tx_count"),
}
EXTRA_GROUPS: tuple[str, ...] = ("time", "cross", "chain")
SERVABLE_GROUPS: tuple[str, ...] = ("base", "time")  # computable from one market's own bars
DAY_MS, WEEK_MS = 86_400_000, 7 * 86_400_000


def feature_names(groups: tuple[str, ...] | list[str] = ("base",)) -> tuple[str, ...]:
    """Feature names of ``groups`` in the one canonical order (base first).

    >>> feature_names(("time",))[-4:]
    ('tod_sin', 'tod_cos', 'dow_sin', 'dow_cos')
    """
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown feature group(s) {sorted(unknown)}; choose from {', '.join(GROUPS)}")
    return tuple(n for g in GROUPS if g == "base" or g in groups for n in GROUPS[g])


def canonical_groups(groups: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    feature_names(groups)  # validates
    return tuple(g for g in GROUPS if g == "base" or g in groups)

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


def bar_features(bars: np.ndarray, groups: tuple[str, ...] = ("base",), leader: np.ndarray | None = None) -> np.ndarray:
    """Features (N, len(feature_names(groups))) float32; NaN rows lack WARMUP contiguous bars.

    ``leader`` (bars of the leading market) is needed by the ``cross`` group;
    the ``chain`` group needs bars with the chain columns of ``models.history``.

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

    parts = [out]
    groups = canonical_groups(groups)
    if "time" in groups:
        parts.append(_time_features(bars[:, TS]))
    if "cross" in groups:
        if leader is None:
            raise ValueError("the cross feature group needs the leader's bars")
        parts.append(_leader_features(bars[:, TS], leader))
    if "chain" in groups:
        if bars.shape[1] <= CHAIN_TX_COUNT:
            raise ValueError("the chain feature group needs bars with chain columns (these bars have none)")
        parts.append(np.column_stack([bars[:, BASE_FEE_CHANGE], bars[:, GAS_UTILISATION],
                                      np.log1p(np.maximum(bars[:, CHAIN_TX_COUNT], 0.0))]))
    out = np.concatenate(parts, axis=1) if len(parts) > 1 else out
    # Rows whose look-back would reach across a gap are invalid, not approximated.
    out[contiguous_run(bars[:, TS]) <= WARMUP] = np.nan
    out[~np.isfinite(out).all(axis=1)] = np.nan
    return out.astype(np.float32)


def _time_features(ts: np.ndarray) -> np.ndarray:
    """(N, 4): minute of day and of week as angles (the bar's close time, when the forecast is made)."""
    close = ts + MINUTE_MS
    day = 2 * np.pi * (close % DAY_MS) / DAY_MS
    week = 2 * np.pi * ((close + 3 * DAY_MS) % WEEK_MS) / WEEK_MS  # epoch day 0 was a Thursday: Monday = 0
    return np.column_stack([np.sin(day), np.cos(day), np.sin(week), np.cos(week)])


def _leader_features(ts: np.ndarray, leader: np.ndarray) -> np.ndarray:
    """(N, 2): the leader's ret and vol_short at the same bar open time; NaN where it has no bar."""
    lead = bar_features(leader)
    pos = np.searchsorted(leader[:, TS], ts)
    pos_c = np.minimum(pos, max(len(leader) - 1, 0))
    hit = (pos < len(leader)) & (leader[pos_c, TS] == ts) if len(leader) else np.zeros(len(ts), bool)
    out = np.full((len(ts), 2), np.nan)
    out[hit] = lead[pos_c[hit]][:, [RET, FEATURES.index("vol_short")]]
    return out


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


def window_tensor(bars: np.ndarray, window: int, groups: tuple[str, ...] = ("base",)) -> np.ndarray | None:
    """Model input (1, window, F) float32 from the last rows of ``bars``.

    None when the last ``window + WARMUP`` bars are not contiguous (a gap, or
    not enough history yet): the stream then skips the forecast.
    """
    need = window + WARMUP
    if len(bars) < need:
        return None
    feats = bar_features(np.asarray(bars)[-need:], groups)[-window:]
    if not np.isfinite(feats).all():
        return None
    return feats[None, :, :]

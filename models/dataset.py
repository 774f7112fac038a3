"""Bars -> (window, target) samples, split by time: train | validation | test.

Splits are taken in time order and never shuffled across time. Several series
are cut at the SAME instants (one global time cut over the pooled timestamps),
so no series' test rows precede another's training rows; the first
``horizon`` minutes of validation and test are dropped (an embargo) so no train
target overlaps a later split's targets.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from chaincast.models.features import bar_features, valid_windows
from chaincast.models.history import CLOSE, TS
from chaincast.models.timeunits import MINUTE_MS
from chaincast.models.targets import make_target


@dataclass
class Samples:
    x: np.ndarray  # (N, T, F) float32 windows
    y: np.ndarray  # (N,) float32 targets
    ts: np.ndarray  # (N,) open time of each window's last bar, ms
    close: np.ndarray  # (N,) close of that bar: the price a forecast starts from

    def __len__(self) -> int:
        return len(self.y)

    def take(self, start: int, stop: int) -> Samples:
        return Samples(*(getattr(self, f.name)[start:stop] for f in fields(self)))

    @staticmethod
    def concat(parts: list[Samples]) -> Samples:
        if not parts:
            raise ValueError("no samples")
        return Samples(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Samples)))


@dataclass
class Splits:
    train: Samples
    val: Samples
    test: Samples


def samples(bars: np.ndarray, window: int, horizon: int, target: str, groups: tuple[str, ...] = ("base",),
            leader: np.ndarray | None = None) -> Samples:
    """Every valid (window, target) pair of one series, in time order."""
    feats = bar_features(bars, groups, leader)
    y = make_target(bars, horizon, target)
    ok = valid_windows(feats, window) & np.isfinite(y)
    end = np.flatnonzero(ok)
    if len(end) == 0:
        n_feat = feats.shape[1]
        return Samples(np.zeros((0, window, n_feat), np.float32), np.zeros(0, np.float32), np.zeros(0), np.zeros(0))
    view = np.lib.stride_tricks.sliding_window_view(feats, window, axis=0)  # (N-T+1, F, T)
    x = np.ascontiguousarray(view[end - window + 1].transpose(0, 2, 1))  # (M, T, F)
    return Samples(x, y[end].astype(np.float32), bars[end, TS], bars[end, CLOSE])


def split_by_time(s: Samples, horizon: int, val: float = 0.15, test: float = 0.15) -> Splits:
    n = len(s)
    a, b = int(n * (1 - val - test)), int(n * (1 - test))
    return Splits(s.take(0, a), s.take(a + horizon, b), s.take(b + horizon, n))


def time_cuts(series: list[Samples], fractions: tuple[float, ...]) -> list[float]:
    """Timestamps cutting the POOLED rows of every series at ``fractions`` (one clock for all).

    >>> a = Samples(np.zeros((4, 1, 1)), np.zeros(4), np.array([0.0, 1, 2, 3]), np.ones(4))
    >>> time_cuts([a, a], (0.5,))
    [2.0]
    """
    ts = np.sort(np.concatenate([s.ts for s in series]))
    if not len(ts):
        return [0.0 for _ in fractions]
    return [float(ts[min(int(len(ts) * f), len(ts) - 1)]) for f in fractions]


def split_at_times(s: Samples, cuts: list[float], horizon: int) -> list[Samples]:
    """Rows before cuts[0], between cuts, after the last; each later part starts ``horizon`` minutes late."""
    edges = [-np.inf, *cuts, np.inf]
    parts = []
    for k in range(len(edges) - 1):
        start = edges[k] + (horizon * MINUTE_MS if k else 0)
        idx = np.flatnonzero((s.ts >= start) & (s.ts < edges[k + 1]))
        parts.append(s.take(int(idx[0]), int(idx[-1]) + 1) if len(idx) else s.take(0, 0))
    return parts


def make_splits(
    bars_list: list[np.ndarray], window: int, horizon: int, target: str, val: float = 0.15, test: float = 0.15,
    groups: tuple[str, ...] = ("base",),
) -> Splits:
    """Cut every series at the same instants (the pooled rows' quantiles), then pool split by split.

    The ``cross`` group's leader is the first series.
    """
    leader = bars_list[0] if bars_list else None
    series = [samples(b, window, horizon, target, groups, leader) for b in bars_list]
    cuts = time_cuts(series, (1 - val - test, 1 - test))
    parts = [Splits(*split_at_times(s, cuts, horizon)) for s in series]
    splits = Splits(*(Samples.concat([getattr(p, k) for p in parts]) for k in ("train", "val", "test")))
    for name in ("train", "val", "test"):
        if len(getattr(splits, name)) == 0:
            raise ValueError(f"not enough contiguous bars for a {name} split (window {window}, horizon {horizon})")
    return splits

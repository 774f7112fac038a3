"""Bars -> (window, target) samples, split by time: train | validation | test.

Splits are taken per series in time order and never shuffled across time; the
first ``horizon`` samples of validation and test are dropped (an embargo) so
no train target overlaps a later split's targets.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from chaincast.models.features import bar_features, valid_windows
from chaincast.models.history import CLOSE, TS
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


def samples(bars: np.ndarray, window: int, horizon: int, target: str) -> Samples:
    """Every valid (window, target) pair of one series, in time order."""
    feats = bar_features(bars)
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


def make_splits(
    bars_list: list[np.ndarray], window: int, horizon: int, target: str, val: float = 0.15, test: float = 0.15
) -> Splits:
    """Split each series by time, then pool the series split by split."""
    parts = [split_by_time(samples(b, window, horizon, target), horizon, val, test) for b in bars_list]
    splits = Splits(*(Samples.concat([getattr(p, k) for p in parts]) for k in ("train", "val", "test")))
    for name in ("train", "val", "test"):
        if len(getattr(splits, name)) == 0:
            raise ValueError(f"not enough contiguous bars for a {name} split (window {window}, horizon {horizon})")
    return splits

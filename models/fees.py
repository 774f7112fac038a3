"""Fee features, targets and samples on the block clock: one implementation for training AND serving.

Row ``i`` of a block series (``models.blocks``) gives the features of block ``i``,
computed only from blocks ``<= i``:

- ``fee_step``: log(base_fee[i] / base_fee[i-1]);
- ``gas_ratio``: gas_used / gas_limit (block fullness);
- ``eip1559_step``: log(next_base_fee(i) / base_fee[i]), the EIP-1559 update rule
  applied to block ``i`` — exactly the next block's base fee up to rounding;
- ``log_base_fee``: log of the base fee in gwei (its level: high fees revert);
- ``log_tx_count``: log1p(transactions); 0 where the count is unknown;
- ``slot_gap``: seconds since the previous block / 12 (missed slots show as 2, 3).

A row is valid only when block ``i - 1`` is in the series (contiguous numbers), and
a window only when all its rows are: no window spans a hole in the numbers. Missed
slots are not holes (the numbers stay contiguous); they show in ``slot_gap``.

Targets, h blocks ahead (NaN when block ``i + h`` is not in the series):

- ``base_fee``: log(base_fee[i+h] / base_fee[i]);
- ``gas_ratio``: gas_used / gas_limit of block ``i + h``.

Every forecaster predicts the target as its *reference* plus a learned residual:
the EIP-1559 step for ``base_fee`` (exact at h = 1, then flat) and the current
fullness for ``gas_ratio``. The reference is a feature of the last row, so the
exported graph adds it itself and serving needs nothing beside the ONNX file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chaincast.models.blocks import BASE_FEE, GAS_LIMIT, GAS_USED, NUMBER, TIMESTAMP, TX_COUNT

FEE_FEATURES: tuple[str, ...] = ("fee_step", "gas_ratio", "eip1559_step", "log_base_fee", "log_tx_count", "slot_gap")
FEE_TARGETS: tuple[str, ...] = ("base_fee", "gas_ratio")
FEE_STEP, GAS_RATIO, EIP1559_STEP, LOG_BASE_FEE, LOG_TX_COUNT, SLOT_GAP = range(len(FEE_FEATURES))
SLOT_SECONDS = 12
GWEI = 1e9

# The feature each target's forecast starts from (the reference the residual is added to).
REFERENCE_FEATURE = {"base_fee": EIP1559_STEP, "gas_ratio": GAS_RATIO}
# The honest reference each target is judged against.
REFERENCE = {"base_fee": "eip1559", "gas_ratio": "persistence"}


def next_base_fee(base_fee: np.ndarray, gas_used: np.ndarray, gas_limit: np.ndarray) -> np.ndarray:
    """The EIP-1559 base fee of the block after each one (elasticity 2, change denominator 8).

    >>> next_base_fee(np.array([1e9, 1e9, 1e9]), np.array([15e6, 30e6, 0.0]), np.array([30e6, 30e6, 30e6])).tolist()
    [1000000000.0, 1125000000.0, 875000000.0]
    """
    target = np.floor(gas_limit / 2)
    diff = gas_used - target
    up = base_fee + np.maximum(np.floor(np.floor(base_fee * diff / target) / 8), 1.0)
    down = base_fee - np.floor(np.floor(base_fee * -diff / target) / 8)
    return np.where(diff > 0, up, np.where(diff < 0, down, base_fee))


def contiguous(numbers: np.ndarray) -> np.ndarray:
    """Boolean (N,): the block before row i is row i-1.

    >>> contiguous(np.array([5.0, 6.0, 8.0, 9.0])).tolist()
    [False, True, False, True]
    """
    ok = np.zeros(len(numbers), dtype=bool)
    ok[1:] = np.diff(numbers) == 1
    return ok


def block_features(blocks: np.ndarray) -> np.ndarray:
    """Features (N, len(FEE_FEATURES)) float32; NaN rows lack their previous block."""
    blocks = np.asarray(blocks, dtype=np.float64)
    n = len(blocks)
    out = np.full((n, len(FEE_FEATURES)), np.nan)
    if n == 0:
        return out.astype(np.float32)
    fee, used, limit = blocks[:, BASE_FEE], blocks[:, GAS_USED], blocks[:, GAS_LIMIT]
    out[1:, FEE_STEP] = np.log(fee[1:] / fee[:-1])
    out[:, GAS_RATIO] = used / limit
    out[:, EIP1559_STEP] = np.log(next_base_fee(fee, used, limit) / fee)
    out[:, LOG_BASE_FEE] = np.log(fee / GWEI)
    out[:, LOG_TX_COUNT] = np.log1p(np.nan_to_num(blocks[:, TX_COUNT], nan=0.0))
    out[1:, SLOT_GAP] = np.diff(blocks[:, TIMESTAMP]) / SLOT_SECONDS
    out[~contiguous(blocks[:, NUMBER])] = np.nan
    return out.astype(np.float32)


def make_fee_target(blocks: np.ndarray, horizon: int, target: str = "base_fee") -> np.ndarray:
    """Target (N,) float64 at each row; NaN where block i + horizon is not in the series.

    >>> b = np.zeros((4, 7)); b[:, NUMBER] = [1, 2, 3, 5]; b[:, BASE_FEE] = [1e9, 2e9, 4e9, 8e9]
    >>> b[:, GAS_USED] = [1, 2, 3, 4]; b[:, GAS_LIMIT] = 4
    >>> make_fee_target(b, 1).round(4).tolist()
    [0.6931, 0.6931, nan, nan]
    >>> make_fee_target(b, 1, "gas_ratio").tolist()
    [0.5, 0.75, nan, nan]
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if target not in FEE_TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(FEE_TARGETS)}")
    n = len(blocks)
    out = np.full(n, np.nan)
    if n <= horizon:
        return out
    ok = blocks[horizon:, NUMBER] - blocks[:-horizon, NUMBER] == horizon
    if target == "base_fee":
        value = np.log(blocks[horizon:, BASE_FEE] / blocks[:-horizon, BASE_FEE])
    else:
        value = blocks[horizon:, GAS_USED] / blocks[horizon:, GAS_LIMIT]
    out[: n - horizon] = np.where(ok, value, np.nan)
    return out


def valid_ends(features: np.ndarray, window: int) -> np.ndarray:
    """Boolean (N,): rows i-window+1..i are all valid features."""
    finite = np.isfinite(features).all(axis=1)
    idx = np.arange(len(finite))
    last_bad = np.maximum.accumulate(np.where(finite, -1, idx)) if len(idx) else idx
    return idx - last_bad >= window


@dataclass
class BlockSamples:
    """Windows of one block series, materialised lazily: 1M blocks of windows would not fit."""

    features: np.ndarray  # (N, F) float32
    ends: np.ndarray  # (M,) row index of each sample's last block
    y: np.ndarray  # (M,) float32 targets
    number: np.ndarray  # (M,) block number of the last block
    base_fee: np.ndarray  # (M,) base fee (wei) of the last block
    window: int

    def __len__(self) -> int:
        return len(self.ends)

    def take(self, idx: slice | np.ndarray) -> BlockSamples:
        return BlockSamples(self.features, self.ends[idx], self.y[idx], self.number[idx], self.base_fee[idx],
                            self.window)

    def x(self, idx: slice | np.ndarray | None = None) -> np.ndarray:
        """(K, window, F) float32 windows of the chosen samples."""
        ends = self.ends if idx is None else self.ends[idx]
        view = np.lib.stride_tricks.sliding_window_view(self.features, self.window, axis=0)  # (N-T+1, F, T)
        return np.ascontiguousarray(view[ends - self.window + 1].transpose(0, 2, 1))

    def last(self, feature: int) -> np.ndarray:
        """(M,) float64: one feature of each sample's last block (e.g. its reference)."""
        return self.features[self.ends, feature].astype(np.float64)


def block_samples(blocks: np.ndarray, window: int, horizon: int, target: str) -> BlockSamples:
    """Every valid (window, target) pair of one series, in block order."""
    feats = block_features(blocks)
    y = make_fee_target(blocks, horizon, target)
    ends = np.flatnonzero(valid_ends(feats, window) & np.isfinite(y))
    return BlockSamples(feats, ends, y[ends].astype(np.float32), blocks[ends, NUMBER], blocks[ends, BASE_FEE], window)


def window_of(blocks: np.ndarray, window: int) -> np.ndarray | None:
    """Model input (1, window, F) from the last blocks; None when they are not contiguous or too few."""
    if len(blocks) < window + 1:
        return None
    feats = block_features(np.asarray(blocks, dtype=np.float64)[-(window + 1):])[-window:]
    return feats[None] if np.isfinite(feats).all() else None

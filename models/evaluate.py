"""Scores, all on the same rows: point errors, skill, and proper scores of the band.

These functions are the one scoring implementation: the backtest, training
cards, the promotion gate and the block-series / transaction models import
them, so a score means the same everywhere.

- ``mae``, ``rmse``, ``directional_accuracy``, ``skill_vs_persistence``: the point forecast.
- ``coverage_80``: share of targets inside [q10, q90] (rewards wide bands alone).
- ``interval_score_80``: Gneiting-Raftery interval score of the 80 % band, width
  plus 2/alpha times every miss; lower is better, and wide bands pay for width.
- ``pinball``: mean quantile loss of q10/q50/q90.
- ``qlike`` (volatility only): Patton's QLIKE on variances, robust to noise in
  the realised target; lower is better.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

QUANTILE_LEVELS = np.array([0.1, 0.5, 0.9])
BAND_ALPHA = 0.2  # the q10..q90 band is an 80 % interval
METRICS: tuple[str, ...] = (
    "mae", "rmse", "directional_accuracy", "skill_vs_persistence", "coverage_80", "interval_score_80", "pinball",
)
VOL_METRICS: tuple[str, ...] = (*METRICS, "qlike")
VAR_FLOOR = 1e-12  # a zero variance forecast would make QLIKE infinite


def metric_names(target: str) -> tuple[str, ...]:
    """The metrics reported for ``target``: QLIKE only where the target is a volatility."""
    return VOL_METRICS if target == "volatility" else METRICS


class ArrayModel(Protocol):
    """A model that is not a torch module (LightGBM): numpy windows in, (N, 4) out."""

    def predict(self, x: np.ndarray) -> np.ndarray: ...


def predict(module: nn.Module | Any, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Run a model over (N, T, F) windows in chunks -> (N, 4) float64."""
    if not isinstance(module, nn.Module):
        return np.asarray(module.predict(np.asarray(x, dtype=np.float32)), dtype=np.float64).reshape(-1, 4)
    module.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(module(torch.from_numpy(np.ascontiguousarray(x[i : i + batch]))).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 4))


def interval_score(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, alpha: float = BAND_ALPHA) -> np.ndarray:
    """Per-row interval score of the central (1 - alpha) band [lo, hi].

    >>> interval_score(np.array([0.0, 2.0]), np.array([-1.0, -1.0]), np.array([1.0, 1.0]), 0.2).tolist()
    [2.0, 12.0]
    """
    return (hi - lo) + (2 / alpha) * np.maximum(lo - y, 0) + (2 / alpha) * np.maximum(y - hi, 0)


def pinball_rows(y: np.ndarray, q: np.ndarray, levels: np.ndarray = QUANTILE_LEVELS) -> np.ndarray:
    """Per-row quantile loss of q (N, K) at ``levels`` (K,), averaged over levels -> (N,).

    >>> pinball_rows(np.array([1.0]), np.array([[0.0, 1.0, 2.0]])).round(4).tolist()
    [0.0667]
    """
    err = y[:, None] - q
    return np.maximum(levels * err, (levels - 1) * err).mean(axis=1)


def qlike_rows(y_vol: np.ndarray, vol_hat: np.ndarray) -> np.ndarray:
    """Per-row QLIKE of a volatility forecast: log(v_hat) + v / v_hat on variances (Patton 2011).

    Finite when the realised variance is zero; minimised in expectation by the true variance.

    >>> r = qlike_rows(np.array([0.01]), np.array([0.01]))
    >>> bool(r[0] < qlike_rows(np.array([0.01]), np.array([0.02]))[0])
    True
    """
    v_hat = np.maximum(np.square(vol_hat), VAR_FLOOR)
    return np.log(v_hat) + np.square(y_vol) / v_hat


def row_losses(y: np.ndarray, pred: np.ndarray, target: str) -> dict[str, np.ndarray]:
    """The per-row losses the gate's Diebold-Mariano test compares: ``point`` and ``interval``.

    ``point`` is the absolute error for returns, QLIKE for volatility.
    """
    point = qlike_rows(y, pred[:, 0]) if target == "volatility" else np.abs(y - pred[:, 0])
    return {"point": point, "interval": interval_score(y, pred[:, 1], pred[:, 3])}


def metrics(y: np.ndarray, pred: np.ndarray, persistence: np.ndarray, target: str = "log_return") -> dict[str, float]:
    """Metrics of ``pred`` (N, 4) against targets ``y`` (N,).

    ``persistence`` (N, 4) is the persistence forecast on the same rows: skill
    is ``1 - MAE / MAE_persistence`` and direction is judged as a move away
    from it (for returns: up or down; for volatility: rising or falling).
    Persistence calls no direction, so it scores the share of rows that did
    not move.

    >>> y = np.array([0.01, -0.02, 0.03, 0.0])
    >>> zero = np.zeros((4, 4))
    >>> p = np.array([[0.01, -0.02, 0.0, 0.02]] * 4)
    >>> m = metrics(y, p, zero)
    >>> round(m["mae"], 4), m["directional_accuracy"], m["coverage_80"], round(m["skill_vs_persistence"], 4)
    (0.015, 0.5, 0.75, 0.0)
    >>> metrics(y, zero, zero)["skill_vs_persistence"]
    0.0
    """
    y_hat, ref = pred[:, 0], persistence[:, 0]
    mae = float(np.mean(np.abs(y - y_hat)))
    mae_p = float(np.mean(np.abs(y - ref)))
    out = {
        "mae": mae,
        "rmse": float(np.sqrt(np.mean((y - y_hat) ** 2))),
        "directional_accuracy": float(np.mean(np.sign(y_hat - ref) == np.sign(y - ref))),
        # Identical forecasts have exactly zero skill, even when both are perfect.
        "skill_vs_persistence": 0.0 if np.array_equal(y_hat, ref) or mae_p == 0 else 1.0 - mae / mae_p,
        "coverage_80": float(np.mean((y >= pred[:, 1]) & (y <= pred[:, 3]))),
        "interval_score_80": float(np.mean(interval_score(y, pred[:, 1], pred[:, 3]))),
        "pinball": float(np.mean(pinball_rows(y, pred[:, 1:4]))),
    }
    if target == "volatility":
        out["qlike"] = float(np.mean(qlike_rows(y, y_hat)))
    return out


def pinball(y: torch.Tensor, q: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Mean quantile loss of q (N, K) at ``levels`` (K,) for targets y (N,) (the training loss).

    >>> round(float(pinball(torch.tensor([1.0]), torch.tensor([[0.0]]), torch.tensor([0.9]))), 6)
    0.9
    """
    err = y[:, None] - q
    return torch.maximum(levels * err, (levels - 1) * err).mean()

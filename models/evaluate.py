"""Scores, all on the same rows: MAE, RMSE, directional accuracy, skill, band coverage."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

METRICS: tuple[str, ...] = ("mae", "rmse", "directional_accuracy", "skill_vs_persistence", "coverage_80")


def predict(module: nn.Module, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Run a torch model over (N, T, F) windows in chunks -> (N, 4) float64."""
    module.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(module(torch.from_numpy(np.ascontiguousarray(x[i : i + batch]))).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 4))


def metrics(y: np.ndarray, pred: np.ndarray, persistence: np.ndarray) -> dict[str, float]:
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
    return {
        "mae": mae,
        "rmse": float(np.sqrt(np.mean((y - y_hat) ** 2))),
        "directional_accuracy": float(np.mean(np.sign(y_hat - ref) == np.sign(y - ref))),
        # Identical forecasts have exactly zero skill, even when both are perfect.
        "skill_vs_persistence": 0.0 if np.array_equal(y_hat, ref) or mae_p == 0 else 1.0 - mae / mae_p,
        "coverage_80": float(np.mean((y >= pred[:, 1]) & (y <= pred[:, 3]))),
    }


def pinball(y: torch.Tensor, q: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Mean quantile loss of q (N, K) at ``levels`` (K,) for targets y (N,).

    >>> round(float(pinball(torch.tensor([1.0]), torch.tensor([[0.0]]), torch.tensor([0.9]))), 6)
    0.9
    """
    err = y[:, None] - q
    return torch.maximum(levels * err, (levels - 1) * err).mean()

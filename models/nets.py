"""Learned model families: a dataclass config plus a small body module each.

Every body maps scaled features (B, T, F) to four raw numbers (B, 4);
``ForecastNet`` wraps a body with the train-split feature scaling and the
output head, so the exported ONNX graph holds everything serving needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


CONSTANT_STD = 1e-8  # a feature whose train-split spread is at most this did not vary


class ForecastNet(nn.Module):
    """(B, T, F) raw features -> (B, 4) = [y_hat, q10, q50, q90] in target units.

    Scaling buffers are fitted on the train split by ``fit_scaling`` and saved
    in the state dict / ONNX graph, never refitted at serving time.
    """

    def __init__(self, body: nn.Module, n_features: int) -> None:
        super().__init__()
        self.body = body
        self.register_buffer("x_mean", torch.zeros(n_features))
        self.register_buffer("x_std", torch.ones(n_features))
        self.register_buffer("y_center", torch.zeros(()))
        self.register_buffer("y_scale", torch.ones(()))
        # softplus(1.0) ~ 1.31: the band starts near +-1.28 target std (a normal 10/90 band).
        self.band_bias = nn.Parameter(torch.ones(2))

    @torch.no_grad()
    def fit_scaling(self, x: torch.Tensor, y: torch.Tensor, center_target: bool) -> None:
        """x (N, T, F), y (N,) from the train split only."""
        flat = x.reshape(-1, x.shape[-1])
        self.x_mean.copy_(flat.mean(0))
        # A feature that never varied in training (the taker buy ratio of a history without buy
        # volume: 0.5 throughout) taught the model nothing; scaled by its ~0 spread, any live value
        # would be millions of standard deviations out and the forecast absurd. Its scale is
        # infinite instead: the model sees 0 for it, as in training.
        std = flat.std(0)
        self.x_std.copy_(torch.where(std > CONSTANT_STD, std, torch.full_like(std, math.inf)))
        # Returns are not centred: baking the train period's drift into the model is a bet, not a fit.
        self.y_center.fill_(float(y.mean()) if center_target else 0.0)
        self.y_scale.fill_(max(float(y.std()), 1e-8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.x_mean) / self.x_std  # (B, T, F)
        raw = self.body(z)  # (B, 4)
        q50 = raw[:, 1:2]
        width = F.softplus(raw[:, 2:4] + self.band_bias)  # (B, 2), keeps q10 <= q50 <= q90
        out = torch.cat([raw[:, 0:1], q50 - width[:, 0:1], q50, q50 + width[:, 1:2]], dim=1)  # (B, 4)
        return self.y_center + self.y_scale * out


@dataclass
class LinearConfig:
    window: int = 32
    n_features: int = 7


class LinearBody(nn.Module):
    """One affine map of the whole flattened window: the honest simple model."""

    def __init__(self, cfg: LinearConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(cfg.window * cfg.n_features, 4)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.proj(z.flatten(1))  # (B, T*F) -> (B, 4)


@dataclass
class RNNConfig:
    cell: str = "gru"  # "gru" or "lstm"
    n_features: int = 7
    hidden: int = 32
    layers: int = 1
    dropout: float = 0.0


class RNNBody(nn.Module):
    """GRU or LSTM over the window; the last hidden state predicts."""

    def __init__(self, cfg: RNNConfig) -> None:
        super().__init__()
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[cfg.cell]
        dropout = cfg.dropout if cfg.layers > 1 else 0.0  # torch warns on dropout with one layer
        self.rnn = rnn(cfg.n_features, cfg.hidden, cfg.layers, batch_first=True, dropout=dropout)
        self.head = nn.Linear(cfg.hidden, 4)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(z)  # (B, T, H)
        return self.head(out[:, -1])  # (B, 4)

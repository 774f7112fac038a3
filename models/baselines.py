"""Baselines every model is judged against, as exportable modules.

- ``persistence``: no change (log return 0; for volatility, the realised
  volatility of the last h bars).
- ``ema_drift``: the EMA of recent returns carried forward h bars (for
  volatility, the EMA of squared returns).

Both are ``nn.Module``s with the same (B, T, F) -> (B, 4) contract as the
learned models, so persistence itself can be exported and served when nothing
beats it. Their band is base + m_k * recent volatility, the multipliers m_k
being empirical quantiles fitted on the train split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from chaincast.models.family_names import BASELINES
from chaincast.models.features import RET

QUANTILES = (0.1, 0.5, 0.9)


@dataclass
class BaselineConfig:
    kind: str = "persistence"  # or "ema_drift"
    window: int = 32
    horizon: int = 1
    target: str = "log_return"
    vol_bars: int = 30  # bars of returns behind the band's volatility scale
    ema_span: int = 10


class BaselineNet(nn.Module):
    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__()
        if cfg.kind not in BASELINES:
            raise ValueError(f"unknown baseline {cfg.kind!r}")
        if cfg.horizon > cfg.window:
            raise ValueError("the volatility baseline needs horizon <= window")
        self.cfg = cfg
        self.vol_bars = min(cfg.vol_bars, cfg.window)
        alpha = 2.0 / (cfg.ema_span + 1)
        w = alpha * (1 - alpha) ** torch.arange(cfg.window - 1, -1, -1, dtype=torch.float32)
        self.register_buffer("ema_weights", w / w.sum())  # (T,), newest bar weighs most
        self.register_buffer("multipliers", torch.tensor([-1.2816, 0.0, 1.2816]))  # normal 10/50/90 until fitted

    def _base_and_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = x[:, :, RET]  # (B, T)
        cfg = self.cfg
        scale = r[:, -self.vol_bars :].square().mean(1).sqrt()  # (B,) per-bar realised volatility
        if cfg.target == "volatility":
            if cfg.kind == "persistence":
                base = r[:, -cfg.horizon :].square().mean(1).sqrt()
            else:
                base = (r.square() * self.ema_weights).sum(1).sqrt()
            return base, scale
        scale = scale * cfg.horizon**0.5  # returns over h bars spread like sqrt(h)
        if cfg.kind == "persistence":
            return torch.zeros_like(scale), scale
        return cfg.horizon * (r * self.ema_weights).sum(1), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base, scale = self._base_and_scale(x)  # (B,), (B,)
        q = base[:, None] + scale[:, None] * self.multipliers  # (B, 3)
        return torch.cat([base[:, None], q], dim=1)  # (B, 4)

    @torch.no_grad()
    def fit(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fit the band multipliers on train windows x (N, T, F) and targets y (N,)."""
        base, scale = self._base_and_scale(x)
        ok = scale > 0
        if int(ok.sum()) < 10:
            return  # too little data to beat the normal prior
        z = ((y[ok] - base[ok]) / scale[ok]).double().numpy()
        self.multipliers.copy_(torch.from_numpy(np.quantile(z, QUANTILES)).float())

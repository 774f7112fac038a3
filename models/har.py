"""HAR-RV (Corsi 2009), closed form: the reference every volatility model must beat.

log realised volatility h bars ahead is regressed (ordinary least squares on
the train split) on the log realised volatility of the last 1, 5, 15 and
``window`` bars and the log mean high/low range of the last 5 bars. The band
is the train residuals' 10/50/90 % quantiles in log space, so it is never
negative. The point forecast is scaled so that its variance is unbiased on
train (QLIKE's optimum): y_hat = c * exp(mu) with c^2 = mean(y^2 / exp(2 mu)).

For the ``log_return`` target the same regression forecasts |return|'s scale:
the point forecast is 0 (no drift is forecast) and the band is that scale
times the train quantiles of return / scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from chaincast.models.baselines import QUANTILES
from chaincast.models.features import RANGE, RET

EPS = 1e-6  # log floor: a flat minute has zero realised volatility


@dataclass
class HarConfig:
    window: int = 32
    horizon: int = 1
    target: str = "volatility"
    lags: tuple[int, ...] = (1, 5, 15)  # plus the whole window


class HarNet(nn.Module):
    """(B, T, F) -> (B, 4); fitted by ``fit`` (no gradient steps)."""

    def __init__(self, cfg: HarConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lags = tuple(sorted({min(lag, cfg.window) for lag in cfg.lags} | {cfg.window}))
        k = len(self.lags) + 1
        self.register_buffer("coef", torch.zeros(k + 1, dtype=torch.float32))  # intercept first
        self.register_buffer("resid_q", torch.tensor([-1.2816, 0.0, 1.2816]))
        self.register_buffer("scale", torch.ones(()))

    def design(self, x: torch.Tensor) -> torch.Tensor:
        r2 = x[:, :, RET].square()  # (B, T)
        cols = [torch.log(r2[:, -lag:].mean(1).sqrt() + EPS) for lag in self.lags]
        cols.append(torch.log(x[:, -5:, RANGE].abs().mean(1) + EPS))  # abs: ranges are >= 0 anyway
        return torch.stack(cols, dim=1)  # (B, K)

    def _mu(self, x: torch.Tensor) -> torch.Tensor:
        return self.coef[0] + self.design(x) @ self.coef[1:]  # (B,) log-volatility forecast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = self._mu(x)[:, None]  # (B, 1)
        if self.cfg.target == "volatility":
            q = torch.exp(mu + self.resid_q)  # (B, 3)
            return torch.cat([self.scale * torch.exp(mu), q], dim=1)
        spread = torch.exp(mu) * self.resid_q  # (B, 3): return quantiles at the forecast scale
        return torch.cat([torch.zeros_like(mu), spread], dim=1)

    @torch.no_grad()
    def fit(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """OLS on train windows x (N, T, F) and targets y (N,)."""
        d = self.design(x).double().numpy()
        a = np.column_stack([np.ones(len(d)), d])
        yy = y.double().numpy()
        z = np.log(np.abs(yy) + EPS)
        coef, *_ = np.linalg.lstsq(a, z, rcond=None)
        self.coef.copy_(torch.from_numpy(coef).float())
        mu = a @ coef
        if self.cfg.target == "volatility":
            self.resid_q.copy_(torch.from_numpy(np.quantile(z - mu, QUANTILES)).float())
            self.scale.fill_(float(np.sqrt(np.mean(yy**2 / np.exp(2 * mu)))))
        else:
            self.resid_q.copy_(torch.from_numpy(np.quantile(yy / np.exp(mu), QUANTILES)).float())

"""Every model family by name: build a module and its config from one call."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from torch import nn

from chaincast.models.baselines import BaselineConfig, BaselineNet
from chaincast.models.family_names import BASELINES, FAMILIES, LEARNED, REFERENCES  # noqa: F401 - re-exported
from chaincast.models.features import FEATURES
from chaincast.models.gbm import GBMConfig, GBMForecaster
from chaincast.models.har import HarConfig, HarNet
from chaincast.models.nets import ForecastNet, LinearBody, LinearConfig, RNNBody, RNNConfig
from chaincast.models.transformer import TransformerBody, TransformerConfig



def _config(cls: type, overrides: dict[str, Any] | None, **base: Any) -> Any:
    known = {f.name for f in fields(cls)}
    extra = set(overrides or {}) - known
    if extra:
        raise ValueError(f"{cls.__name__} has no option(s) {sorted(extra)}")
    return cls(**{**base, **(overrides or {})})


def make_net(
    family: str,
    window: int,
    horizon: int = 1,
    target: str = "log_return",
    overrides: dict[str, Any] | None = None,
    n_features: int = len(FEATURES),
) -> tuple[nn.Module | GBMForecaster, dict[str, Any]]:
    """Return (model, config as a plain dict) for ``family``; ``n_features`` follows the feature groups."""
    n = n_features
    if family == "linear":
        cfg: Any = _config(LinearConfig, overrides, window=window, n_features=n)
        return ForecastNet(LinearBody(cfg), n), asdict(cfg)
    if family in ("gru", "lstm"):
        cfg = _config(RNNConfig, overrides, cell=family, n_features=n)
        return ForecastNet(RNNBody(cfg), n), asdict(cfg)
    if family == "transformer":
        cfg = _config(TransformerConfig, overrides, window=window, n_features=n)
        return ForecastNet(TransformerBody(cfg), n), asdict(cfg)
    if family == "har":
        cfg = _config(HarConfig, overrides, window=window, horizon=horizon, target=target)
        return HarNet(cfg), asdict(cfg)
    if family == "lightgbm":
        cfg = _config(GBMConfig, overrides, window=window, n_features=n, target=target)
        return GBMForecaster(cfg), asdict(cfg)
    if family in BASELINES:
        cfg = _config(BaselineConfig, overrides, kind=family, window=window, horizon=horizon, target=target)
        return BaselineNet(cfg), asdict(cfg)
    raise ValueError(f"unknown model family {family!r}; choose from {', '.join(FAMILIES)}")

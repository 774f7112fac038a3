"""Training: seeded, time-ordered splits, pinball + point loss, early stopping on validation.

A checkpoint is the module's state dict plus a plain card dict (nanoGPT style):
family, config, features, target, training window, metrics on val and test
beside persistence and EMA drift.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from chaincast.models.baselines import BASELINES, QUANTILES, BaselineNet
from chaincast.models.dataset import Samples, Splits, make_splits
from chaincast.models.evaluate import metrics, pinball, predict
from chaincast.models.families import FAMILIES, make_net
from chaincast.models.features import WARMUP, canonical_groups, feature_names
from chaincast.models.gbm import GBMForecaster
from chaincast.models.har import HarNet
from chaincast.models.nets import ForecastNet
from chaincast.models.targets import TARGETS

log = logging.getLogger(__name__)

# Called after each epoch with (epoch, train_loss, val_loss, best_val_loss).
Progress = Callable[[int, float, float, float], None]


@dataclass
class FitOptions:
    max_epochs: int = 20
    patience: int = 3  # epochs without validation improvement before stopping
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_steps_per_epoch: int | None = None  # caps an epoch on long histories (and in tests)
    overrides: dict[str, Any] = field(default_factory=dict)  # family config fields
    groups: tuple[str, ...] = ("base",)  # feature groups (models.features.GROUPS)


@dataclass
class TrainResult:
    module: nn.Module | GBMForecaster
    card: dict[str, Any]
    val: Samples
    test: Samples
    val_pred: np.ndarray  # (N, 4) on val.x
    test_pred: np.ndarray  # (N, 4) on test.x
    history: list[dict[str, float]]


def _loss(net: ForecastNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Point L1 (the gate is judged on MAE) + pinball on q10/q50/q90, in target std units."""
    out = (net(x) - net.y_center) / net.y_scale  # (B, 4)
    z = (y - net.y_center) / net.y_scale  # (B,)
    return (out[:, 0] - z).abs().mean() + pinball(z, out[:, 1:], torch.tensor(QUANTILES))


def _val_loss(net: ForecastNet, s: Samples, batch: int = 4096) -> float:
    net.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(s), batch):
            x, y = torch.from_numpy(s.x[i : i + batch]), torch.from_numpy(s.y[i : i + batch])
            total += float(_loss(net, x, y)) * len(y)
    return total / max(len(s), 1)


def fit_module(
    family: str,
    train: Samples,
    val: Samples,
    window: int,
    horizon: int,
    target: str,
    seed: int = 0,
    options: FitOptions | None = None,
    progress: Progress | None = None,
) -> tuple[nn.Module | GBMForecaster, dict[str, Any], list[dict[str, float]]]:
    """Build and fit one family on ``train``; keep the state with the best validation loss."""
    opt = options or FitOptions()
    torch.manual_seed(seed)
    # Overrides are one family's config fields, or {family: fields} when several families share options.
    nested = opt.overrides and all(isinstance(v, dict) for v in opt.overrides.values())
    overrides = opt.overrides.get(family, {}) if nested else opt.overrides
    if family == "lightgbm":
        overrides = {**overrides, "seed": seed}
    net, config = make_net(family, window, horizon, target, overrides, n_features=train.x.shape[-1])
    if isinstance(net, GBMForecaster):
        return net.fit(train.x, train.y, val.x, val.y), config, []
    x_tr, y_tr = torch.from_numpy(train.x), torch.from_numpy(train.y)
    if isinstance(net, (BaselineNet, HarNet)):
        net.fit(x_tr, y_tr)
        return net.eval(), config, []
    assert isinstance(net, ForecastNet)
    net.fit_scaling(x_tr, y_tr, center_target=target == "volatility")
    optim = torch.optim.AdamW(net.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, stale, history = float("inf"), copy.deepcopy(net.state_dict()), 0, []
    for epoch in range(opt.max_epochs):
        net.train()
        order = torch.randperm(len(y_tr), generator=gen)  # shuffles within the train split only
        steps = len(order) // opt.batch_size or 1
        if opt.max_steps_per_epoch is not None:
            steps = min(steps, opt.max_steps_per_epoch)
        running = 0.0
        for step in range(steps):
            idx = order[step * opt.batch_size : (step + 1) * opt.batch_size]
            loss = _loss(net, x_tr[idx], y_tr[idx])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optim.step()
            running += loss.item()
        val_loss = _val_loss(net, val)
        if val_loss < best:  # save only when validation improves
            best, best_state, stale = val_loss, copy.deepcopy(net.state_dict()), 0
        else:
            stale += 1
        history.append({"epoch": epoch, "train_loss": running / steps, "val_loss": val_loss})
        if progress is not None:
            progress(epoch, running / steps, val_loss, best)
        if stale >= opt.patience:
            break
    net.load_state_dict(best_state)
    return net.eval(), config, history


def scores(module: nn.Module | GBMForecaster, s: Samples, persistence: nn.Module, ema: nn.Module,
           target: str = "log_return") -> tuple[dict, np.ndarray]:
    """Metrics of ``module`` on ``s`` with both baselines' MAE beside it; returns (metrics, predictions)."""
    pred, p_pers, p_ema = predict(module, s.x), predict(persistence, s.x), predict(ema, s.x)
    y = s.y.astype(np.float64)
    out = metrics(y, pred, p_pers, target)
    out["mae_persistence"] = metrics(y, p_pers, p_pers)["mae"]
    out["mae_ema_drift"] = metrics(y, p_ema, p_pers)["mae"]
    out["rows"] = len(y)
    return out, pred


def train(
    bars_list: list[np.ndarray],
    family: str,
    window: int = 32,
    horizon: int = 1,
    seed: int = 0,
    max_epochs: int = 20,
    target: str = "log_return",
    options: FitOptions | None = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train ``family`` on time-ordered splits of every series; see the module docstring."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose from {', '.join(FAMILIES)}")
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    if window < 2 or horizon < 1:
        raise ValueError("window must be >= 2 and horizon >= 1")
    opt = options or FitOptions(max_epochs=max_epochs)
    groups = canonical_groups(opt.groups)
    splits: Splits = make_splits(bars_list, window, horizon, target, groups=groups)
    started = time.monotonic()
    module, config, history = fit_module(family, splits.train, splits.val, window, horizon, target, seed, opt, progress)
    base = {k: fit_module(k, splits.train, splits.val, window, horizon, target, seed)[0] for k in BASELINES}
    val_m, val_pred = scores(module, splits.val, base["persistence"], base["ema_drift"], target)
    test_m, test_pred = scores(module, splits.test, base["persistence"], base["ema_drift"], target)
    card = {
        "name": name or family,
        "family": family,
        "config": config,
        "features": list(feature_names(groups)),
        "feature_groups": list(groups),
        "warmup": WARMUP,
        "window": window,
        "horizon": horizon,
        "target": target,
        "outputs": ["y_hat", "q10", "q50", "q90"],
        "seed": seed,
        "training_window": {"first_ts": int(splits.train.ts.min()), "last_ts": int(splits.train.ts.max())},
        "rows": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "epochs": len(history),
        "train_seconds": round(time.monotonic() - started, 2),
        "metrics": {"val": val_m, "test": test_m},
        "torch": torch.__version__,
    }
    log.info("trained %s: skill vs persistence %.4f on val, %.4f on test",
             family, val_m["skill_vs_persistence"], test_m["skill_vs_persistence"])
    return TrainResult(module, card, splits.val, splits.test, val_pred, test_pred, history)

"""Fee forecasters: baselines (persistence, EIP-1559) and families (linear, GRU, LightGBM).

Every forecaster maps windows (B, T, F) of ``models.fees.FEE_FEATURES`` to (B, 4) =
[y_hat, q10, q50, q90] in target units, as the market models do, and exports to one
ONNX graph with input ``x`` and output ``y`` (dynamic batch). Learned families
predict a residual over the target's reference feature (the EIP-1559 step, or the
current fullness) and the graph adds the reference back.

LightGBM: four boosters (L1 point ("regression_l1": the name onnxmltools knows), quantiles 0.1/0.5/0.9) on the flattened window,
converted with onnxmltools and joined into one graph with the reference added.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from chaincast.models.evaluate import pinball, predict as torch_predict
from chaincast.models.fees import EIP1559_STEP, FEE_FEATURES, REFERENCE_FEATURE, BlockSamples
from chaincast.models.nets import ForecastNet, LinearBody, LinearConfig, RNNBody, RNNConfig

FEE_BASELINES: tuple[str, ...] = ("persistence", "eip1559")
FEE_LEARNED: tuple[str, ...] = ("linear", "lightgbm", "gru")
QUANTILES = (0.1, 0.5, 0.9)


def baselines_for(target: str) -> tuple[str, ...]:
    """EIP-1559 says nothing about how full the next block will be: only persistence there."""
    return FEE_BASELINES if target == "base_fee" else ("persistence",)


class FeeBaseline(nn.Module):
    """``persistence`` (no change / same fullness) or ``eip1559`` (the exact next step, then flat),
    with a constant band: the train residuals' 10/50/90 % quantiles."""

    def __init__(self, kind: str, target: str) -> None:
        super().__init__()
        if kind not in baselines_for(target):
            raise ValueError(f"no {kind!r} baseline for target {target!r}")
        self.kind, self.target = kind, target
        # persistence of a log ratio is 0; of fullness, the last block's fullness
        self.index = EIP1559_STEP if kind == "eip1559" else REFERENCE_FEATURE[target]
        self.use_feature = not (kind == "persistence" and target == "base_fee")
        self.register_buffer("offsets", torch.zeros(3))

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        last = x[:, -1, self.index]  # (B,)
        return last if self.use_feature else torch.zeros_like(last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self._base(x)  # (B,)
        return torch.cat([base[:, None], base[:, None] + self.offsets], dim=1)  # (B, 4)

    @torch.no_grad()
    def fit(self, x: torch.Tensor, y: torch.Tensor) -> None:
        resid = (y.double() - self._base(x).double()).numpy()
        if len(resid) >= 10:
            self.offsets.copy_(torch.from_numpy(np.quantile(resid, QUANTILES)).float())


class ResidualNet(nn.Module):
    """A ForecastNet on the residual, plus the reference feature of the last block."""

    def __init__(self, net: ForecastNet, ref_index: int) -> None:
        super().__init__()
        self.net = net
        self.ref_index = ref_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + x[:, -1, self.ref_index][:, None]  # (B, 4) + (B, 1)


@dataclass
class FeeFit:
    max_epochs: int = 6
    patience: int = 2
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_steps_per_epoch: int | None = None
    hidden: int = 32
    lgbm_trees: int = 300
    lgbm_leaves: int = 31
    lgbm_window: int = 8  # newest blocks of the window the trees see (all of it is 192 columns of noise)
    seed: int = 0
    threads: int = 1


@dataclass
class FeeModel:
    """A fitted forecaster: ``predict`` (N, T, F) -> (N, 4), and ``onnx()`` bytes of the same function."""

    family: str
    target: str
    window: int
    horizon: int
    module: nn.Module | None = None  # torch families and baselines
    boosters: list[Any] = field(default_factory=list)  # lightgbm: point, q10, q50, q90
    lgbm_window: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.module is not None:
            return torch_predict(self.module, x)
        return self._lgbm_predict(np.asarray(x, dtype=np.float32))

    def _lgbm_predict(self, x: np.ndarray) -> np.ndarray:
        flat = x[:, -self.lgbm_window:, :].reshape(len(x), -1)
        raw = np.stack([b.predict(flat, num_threads=1) for b in self.boosters], axis=1)  # (N, 4)
        raw[:, 1] = np.minimum(raw[:, 1], raw[:, 2])  # no crossing: q10 <= q50 <= q90
        raw[:, 3] = np.maximum(raw[:, 3], raw[:, 2])
        return raw + x[:, -1, REFERENCE_FEATURE[self.target]].astype(np.float64)[:, None]

    def onnx(self) -> bytes:
        if self.module is not None:
            from chaincast.models.export import export_onnx

            return export_onnx(self.module, {"window": self.window, "features": list(FEE_FEATURES)})
        from chaincast.models.fee_onnx import lightgbm_onnx

        return lightgbm_onnx(self.boosters, self.window, len(FEE_FEATURES), self.lgbm_window,
                             REFERENCE_FEATURE[self.target])


def _fit_torch(net: ResidualNet, train: BlockSamples, val: BlockSamples, opt: FeeFit) -> ResidualNet:
    x_tr = torch.from_numpy(train.x())
    resid_tr = torch.from_numpy(train.y) - x_tr[:, -1, net.ref_index]
    net.net.fit_scaling(x_tr, resid_tr, center_target=True)
    x_va = torch.from_numpy(val.x())
    y_va = torch.from_numpy(val.y)
    inner = net.net

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = (net(x) - x[:, -1, net.ref_index][:, None] - inner.y_center) / inner.y_scale  # (B, 4) residual units
        z = (y - x[:, -1, net.ref_index] - inner.y_center) / inner.y_scale  # (B,)
        return (out[:, 0] - z).abs().mean() + pinball(z, out[:, 1:], torch.tensor(QUANTILES))

    def val_loss() -> float:
        net.eval()
        with torch.no_grad():
            return sum(float(loss(x_va[i:i + 8192], y_va[i:i + 8192])) * len(y_va[i:i + 8192])
                       for i in range(0, len(y_va), 8192)) / max(len(y_va), 1)

    optim = torch.optim.AdamW(net.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    gen = torch.Generator().manual_seed(opt.seed)
    y_tr = torch.from_numpy(train.y)
    best, best_state, stale = val_loss(), copy.deepcopy(net.state_dict()), 0
    for _ in range(opt.max_epochs):
        net.train()
        order = torch.randperm(len(y_tr), generator=gen)  # shuffled within the train split only
        steps = max(len(order) // opt.batch_size, 1)
        if opt.max_steps_per_epoch is not None:
            steps = min(steps, opt.max_steps_per_epoch)
        for step in range(steps):
            idx = order[step * opt.batch_size:(step + 1) * opt.batch_size]
            batch_loss = loss(x_tr[idx], y_tr[idx])
            optim.zero_grad(set_to_none=True)
            batch_loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optim.step()
        current = val_loss()
        if current < best:  # keep only what validation says is better
            best, best_state, stale = current, copy.deepcopy(net.state_dict()), 0
        else:
            stale += 1
            if stale >= opt.patience:
                break
    net.load_state_dict(best_state)
    return net.eval()


def _fit_lightgbm(train: BlockSamples, val: BlockSamples, target: str, opt: FeeFit) -> tuple[list[Any], int]:
    import lightgbm as lgb

    k = min(opt.lgbm_window, train.window)
    ref = REFERENCE_FEATURE[target]

    def flat(s: BlockSamples) -> tuple[np.ndarray, np.ndarray]:
        x = s.x()
        return x[:, -k:, :].reshape(len(x), -1), s.y.astype(np.float64) - x[:, -1, ref]

    x_tr, r_tr = flat(train)
    x_va, r_va = flat(val)
    boosters = []
    for objective, alpha in (("regression_l1", None), ("quantile", 0.1), ("quantile", 0.5), ("quantile", 0.9)):
        params = {"objective": objective, "learning_rate": 0.05, "num_leaves": opt.lgbm_leaves,
                  "min_data_in_leaf": 100, "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1,
                  "seed": opt.seed, "num_threads": opt.threads, "verbose": -1, "deterministic": True}
        if alpha is not None:
            params["alpha"] = alpha
        booster = lgb.train(params, lgb.Dataset(x_tr, r_tr), num_boost_round=opt.lgbm_trees,
                            valid_sets=[lgb.Dataset(x_va, r_va)],
                            callbacks=[lgb.early_stopping(20, verbose=False)])
        boosters.append(booster)
    return boosters, k


def fit_fee_model(family: str, train: BlockSamples, val: BlockSamples, target: str, horizon: int,
                  options: FeeFit | None = None) -> FeeModel:
    """Build and fit one family (or baseline) on ``train``, early-stopped on ``val``."""
    opt = options or FeeFit()
    torch.manual_seed(opt.seed)
    torch.set_num_threads(opt.threads)
    window, n = train.window, len(FEE_FEATURES)
    model = FeeModel(family, target, window, horizon)
    if family in baselines_for(target):
        base = FeeBaseline(family, target)
        base.fit(torch.from_numpy(train.x()), torch.from_numpy(train.y))
        model.module = base.eval()
        model.config = {"kind": family}
    elif family == "linear":
        cfg = LinearConfig(window=window, n_features=n)
        model.module = _fit_torch(ResidualNet(ForecastNet(LinearBody(cfg), n), REFERENCE_FEATURE[target]),
                                  train, val, opt)
        model.config = {"window": window, "n_features": n}
    elif family == "gru":
        cfg = RNNConfig(cell="gru", n_features=n, hidden=opt.hidden)
        model.module = _fit_torch(ResidualNet(ForecastNet(RNNBody(cfg), n), REFERENCE_FEATURE[target]),
                                  train, val, opt)
        model.config = {"cell": "gru", "n_features": n, "hidden": opt.hidden}
    elif family == "lightgbm":
        model.boosters, model.lgbm_window = _fit_lightgbm(train, val, target, opt)
        model.config = {"trees": [b.best_iteration or b.current_iteration() for b in model.boosters],
                        "leaves": opt.lgbm_leaves, "window_used": model.lgbm_window}
    else:
        known = ", ".join((*baselines_for(target), *FEE_LEARNED))
        raise ValueError(f"unknown fee model {family!r}; choose from {known}")
    return model


def predict_chunked(model: FeeModel, s: BlockSamples, chunk: int = 50_000) -> np.ndarray:
    """(M, 4) predictions over every sample of ``s``, materialising windows a chunk at a time."""
    out = [model.predict(s.x(slice(i, i + chunk))) for i in range(0, len(s), chunk)]
    return np.concatenate(out) if out else np.zeros((0, 4))

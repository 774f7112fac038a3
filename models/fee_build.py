"""Train a fee forecaster, export it, check parity and store it with its card: one call for CLI, ``up`` and retraining.

A fee model's registry name is ``{prefix}.{target}.h{horizon}`` (``fee_model_name``); its
card carries ``kind: fees``, the fee features, the reference it is judged against and
validation / test metrics beside that reference, like a market model's card.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from chaincast.models.build import ModelStore
from chaincast.models.export import ExportError, session
from chaincast.models.fee_backtest import SPLITS
from chaincast.models.fee_models import FeeFit, FeeModel, fit_fee_model, predict_chunked
from chaincast.models.fees import FEE_FEATURES, REFERENCE, BlockSamples, block_samples

log = logging.getLogger(__name__)

PARITY_ROWS = 256
PARITY_LIMIT = 1e-4


def fee_model_name(prefix: str, target: str, horizon: int) -> str:
    """>>> fee_model_name("fees", "base_fee", 5)
    'fees.base_fee.h5'
    """
    return f"{prefix}.{target}.h{horizon}"


def fee_splits(blocks: np.ndarray, window: int, horizon: int, target: str,
               val: float = SPLITS[1], test: float = SPLITS[2]) -> tuple[BlockSamples, BlockSamples, BlockSamples]:
    s = block_samples(blocks, window, horizon, target)
    n = len(s)
    a, b = int(n * (1 - val - test)), int(n * (1 - test))
    if a < 50 or b - a - horizon < 20 or (test > 0 and n - b - horizon < 20):
        raise ValueError(f"{n} windows of {window} contiguous blocks are too few to train on")
    return s.take(slice(0, a)), s.take(slice(a + horizon, b)), s.take(slice(b + horizon, n))


def score(model: FeeModel, reference: FeeModel, s: BlockSamples) -> dict[str, float]:
    """MAE, skill over the reference and band coverage on ``s``."""
    if not len(s):
        return {}
    y = s.y.astype(np.float64)
    p, r = predict_chunked(model, s), predict_chunked(reference, s)
    mae, ref_mae = float(np.mean(np.abs(y - p[:, 0]))), float(np.mean(np.abs(y - r[:, 0])))
    same = np.array_equal(p[:, 0], r[:, 0])
    return {"mae": mae, "mae_reference": ref_mae, "rows": len(y),
            "skill_vs_reference": 0.0 if same or ref_mae == 0 else 1.0 - mae / ref_mae,
            "coverage_80": float(np.mean((y >= p[:, 1]) & (y <= p[:, 3])))}


def checked_onnx(model: FeeModel, x: np.ndarray) -> tuple[bytes, float]:
    """The model's ONNX bytes and the max abs difference from the fitted model on ``x``; raises above the limit."""
    onnx_bytes = model.onnx()
    got = session(onnx_bytes).run(["y"], {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]
    diff = float(np.max(np.abs(got.astype(np.float64) - model.predict(x))))
    if not np.isfinite(diff) or diff > PARITY_LIMIT:
        raise ExportError(f"{model.family}: parity {diff:.3g} above the {PARITY_LIMIT:g} limit")
    return onnx_bytes, diff


@dataclass
class FeeCandidate:
    """A fitted fee model with its card, not yet exported: the gate looks at many, stores one."""

    model: FeeModel
    card: dict[str, Any]
    parity_x: np.ndarray  # windows the exported graph must reproduce

    @property
    def val_skill(self) -> float:
        return float(self.card["metrics"]["val"].get("skill_vs_reference", float("-inf")))


def train_fee_model(blocks: np.ndarray, family: str, target: str, horizon: int, window: int, name: str,
                    options: FeeFit | None = None, parent: str | None = None) -> FeeCandidate:
    """Fit ``family`` on a block series (train | validation | test by block order) and score it."""
    started = time.monotonic()
    train, val, test = fee_splits(blocks, window, horizon, target)
    model = fit_fee_model(family, train, val, target, horizon, options)
    reference = model if family == REFERENCE[target] else fit_fee_model(REFERENCE[target], train, val, target,
                                                                        horizon, options)
    card = {
        "name": name, "kind": "fees", "family": family, "config": model.config, "target": target,
        "horizon": horizon, "window": window, "features": list(FEE_FEATURES), "reference": REFERENCE[target],
        "outputs": ["y_hat", "q10", "q50", "q90"],
        "training_window": {"first_block": int(train.number[0]), "last_block": int(train.number[-1])},
        "rows": {"train": len(train), "val": len(val), "test": len(test)},
        "metrics": {"val": score(model, reference, val), "test": score(model, reference, test)},
        "train_seconds": round(time.monotonic() - started, 2), "parent": parent,
    }
    return FeeCandidate(model, card, (test if len(test) else val).x(slice(0, PARITY_ROWS)))


def store_fee_model(candidate: FeeCandidate, registry: ModelStore) -> Any:
    """Export, check parity, and put the model with its card in the registry."""
    onnx_bytes, diff = checked_onnx(candidate.model, candidate.parity_x)
    entry = registry.put(onnx_bytes, {**candidate.card, "parity_max_abs_diff": diff})
    card = candidate.card
    log.info("stored fee model %s %s: validation skill vs %s %+.4f", card["name"], card["family"],
             card["reference"], candidate.val_skill)
    return entry


def build_fee_model(blocks: np.ndarray, family: str, target: str, horizon: int, window: int, registry: ModelStore,
                    name: str, options: FeeFit | None = None, parent: str | None = None) -> Any:
    """Fit ``family`` on a block series, export and verify it, store it; returns the registry entry."""
    return store_fee_model(train_fee_model(blocks, family, target, horizon, window, name, options, parent), registry)

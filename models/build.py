"""Train, export, check parity and store: the one call the CLI and the retrainer use."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from chaincast.models.export import export_onnx, parity
from chaincast.models.train import FitOptions, Progress, TrainResult, train

log = logging.getLogger(__name__)

PARITY_ROWS = 256  # test windows the exported graph must reproduce


class ModelStore(Protocol):
    """What ``build_model`` needs of a registry (``consumers.registry.Registry`` is one);
    a protocol because ``models`` imports nothing from ``consumers``."""

    def put(self, onnx_bytes: bytes, card: dict[str, Any]) -> Any: ...


def export_checked(result: TrainResult) -> tuple[bytes, dict[str, Any]]:
    """Export a trained model and return (onnx bytes, card with the measured parity)."""
    onnx_bytes = export_onnx(result.module, result.card)
    x = result.test.x[:PARITY_ROWS] if len(result.test) else result.val.x[:PARITY_ROWS]
    diff = parity(result.module, onnx_bytes, np.asarray(x))  # raises above the limit
    return onnx_bytes, {**result.card, "parity_max_abs_diff": diff}


def build_model(
    bars_list: list[np.ndarray],
    family: str,
    window: int,
    horizon: int,
    registry: ModelStore,
    target: str = "log_return",
    seed: int = 0,
    options: FitOptions | None = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> Any:
    """Train ``family`` and store the verified ONNX model; returns the registry's entry."""
    result = train(
        bars_list, family, window, horizon, seed=seed, target=target, options=options, name=name, progress=progress
    )
    onnx_bytes, card = export_checked(result)
    entry = registry.put(onnx_bytes, card)
    log.info("stored %s %s (parity %.2g)", family, getattr(entry, "version", "?"), card["parity_max_abs_diff"])
    return entry

"""ONNX export (one file, dynamic batch, input ``x`` / output ``y``) and the torch parity check."""

from __future__ import annotations

import io
import logging
import warnings
from contextlib import contextmanager
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from chaincast.models.evaluate import predict
from chaincast.models.features import FEATURES
from chaincast.models.serving import session

PARITY_LIMIT = 1e-4  # max abs diff torch vs onnxruntime above which an export is refused
EXAMPLE_BATCH = 4  # >= 2: with a batch-1 example the exporter pins the batch dim to 1


class ExportError(RuntimeError):
    """The exported graph does not reproduce the torch model."""


def export_onnx(module: nn.Module | Any, card: dict[str, Any] | None = None, window: int = 32) -> bytes:
    """Export ``module`` (B, window, F) -> (B, 4) as a single-file ONNX model.

    ``card`` is optional; when given its ``window`` and ``features`` (the fee models have
    their own) win over the defaults. A model that is not a torch module (LightGBM) exports
    itself (``to_onnx``).
    """
    window = int((card or {}).get("window", window))
    if not isinstance(module, nn.Module):
        return module.to_onnx(window)
    n_features = len((card or {}).get("features", FEATURES))
    module = module.eval()
    example = torch.randn(EXAMPLE_BATCH, window, n_features) * 1e-3
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with _quiet_exporter():
        program = _export(module, example, batch)
    if program is None:  # only the legacy exporter writes to a file and returns None
        raise ExportError("torch.onnx.export returned no program")
    buf = io.BytesIO()
    program.save(buf, external_data=False)
    return buf.getvalue()


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs torchvision-missing and deprecation chatter on every call; none of it is actionable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export(module: nn.Module, example: torch.Tensor, batch: object) -> object:
    return torch.onnx.export(
        module,
        (example,),
        input_names=["x"],
        output_names=["y"],
        dynamo=True,  # the default exporter; it needs onnxscript
        dynamic_shapes={"x": {0: batch}},
        external_data=False,
        verbose=False,
    )


def parity(module: nn.Module | Any, onnx_bytes: bytes, x: np.ndarray, limit: float | None = PARITY_LIMIT) -> float:
    """Max abs diff between the trained model (torch or LightGBM) and onnxruntime on ``x`` (B, T, F)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    expected = predict(module, x)
    got = session(onnx_bytes).run(["y"], {"x": x})[0]
    if got.shape != expected.shape:
        raise ExportError(f"onnx output shape {got.shape} != torch {expected.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
    if not np.isfinite(diff) or (limit is not None and diff > limit):
        raise ExportError(f"parity {diff:.3g} above the {limit:g} limit")
    return diff

"""Build the served transaction-value model: train, gate against the reference, export, card.

One time-ordered split (train | validation | test). The encoder and every
median are fitted on train; the reference is the median with the lowest
validation MAE; the encoder is the candidate only if it beats the reference on
validation AND has not collapsed to a constant, else the reference itself is
exported and served (it shares the encoder's ONNX contract).

The card carries what serving needs to rebuild the inputs exactly (window,
vocabulary, feature list, EPS) and to alert: the quantiles of the validation
residual ``y - q50`` at ``ALERT_LEVELS``, so that "above the calibrated q99" is
``y > q50 + residual(0.99)`` and the level stays a setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import io

import numpy as np
import torch
from torch import nn

from chaincast.models.export import EXAMPLE_BATCH, ExportError, _quiet_exporter, session
from chaincast.models.tx_backtest import MEDIANS, choose, prepare, score
from chaincast.models.tx_encoder import QUANTILES, TxEncoderConfig, TxFit, median_model, predict_last, train_encoder
from chaincast.models.txs import EPS, NUM_FEATURES, TxTable

TX_INPUTS = ("ids", "num", "value", "masked")
TX_OUTPUT = "q"
TX_KIND = "tx_value"
ALERT_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.975, 0.99, 0.995, 0.999)
PARITY_LIMIT = 1e-3  # log-value units; the encoder's outputs are O(10)


def export_tx(module: nn.Module, window: int) -> bytes:
    """ONNX bytes of a tx model: inputs ``TX_INPUTS`` with a dynamic batch, output ``q`` (B, T, 3)."""
    module = module.eval()
    g = torch.Generator().manual_seed(0)
    example = (torch.randint(0, 7, (EXAMPLE_BATCH, window, 4), generator=g),  # >= 2: batch stays dynamic
               torch.randn(EXAMPLE_BATCH, window, len(NUM_FEATURES), generator=g),
               torch.randn(EXAMPLE_BATCH, window, generator=g), torch.zeros(EXAMPLE_BATCH, window))
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with _quiet_exporter():
        program = torch.onnx.export(module, example, input_names=list(TX_INPUTS), output_names=[TX_OUTPUT],
                                    dynamo=True, dynamic_shapes={n: {0: batch} for n in TX_INPUTS},
                                    external_data=False, verbose=False)
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    buf = io.BytesIO()
    program.save(buf, external_data=False)
    return buf.getvalue()


def tx_parity(module: nn.Module, onnx_bytes: bytes, inputs: tuple[np.ndarray, ...], limit: float = PARITY_LIMIT) -> float:
    """Max abs diff torch vs onnxruntime on real windows; raise above ``limit``."""
    with torch.no_grad():
        expected = module.eval()(*(torch.from_numpy(a) for a in inputs)).numpy()
    got = session(onnx_bytes).run([TX_OUTPUT], dict(zip(TX_INPUTS, inputs)))[0]
    if got.shape != expected.shape:
        raise ExportError(f"onnx output shape {got.shape} != torch {expected.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
    if not np.isfinite(diff) or diff > limit:
        raise ExportError(f"parity {diff:.3g} above the {limit:g} limit")
    return diff


def masked_inputs(ids: np.ndarray, num: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    masked = np.zeros(y.shape, dtype=np.float32)
    masked[:, -1] = 1.0
    return ids, num, np.where(masked > 0, 0.0, y).astype(np.float32), masked


@dataclass
class TxBuild:
    module: nn.Module
    card: dict[str, Any]
    inputs: tuple[np.ndarray, ...]  # a few real windows for the parity check


def split_rows(n: int, window: int, val: float = 0.15, test: float = 0.15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = np.arange(window - 1, n)
    n_test, n_val = int(len(rows) * test), int(len(rows) * val)
    if len(rows) - n_test - n_val < 100 or n_val < 20:
        raise ValueError(f"{n} transactions are too few to train windows of {window}")
    return rows[: -n_test - n_val], rows[-n_test - n_val : len(rows) - n_test], rows[len(rows) - n_test :]


def build_tx_model(table: TxTable, window: int = 32, fit: TxFit | None = None, min_count: int = 5,
                   name: str = TX_KIND, progress: Callable[[int, float, float], None] | None = None) -> TxBuild:
    """Train the encoder and the medians on one split; return what serves (encoder or reference) with its card."""
    fit = fit or TxFit()
    train, val, test = split_rows(len(table), window)
    p = prepare(table, train, min_count)
    cfg = TxEncoderConfig(n_addresses=p.vocab.size, window=window)
    models: dict[str, nn.Module] = {m: median_model(m, p.vocab.size, p.ids[train], p.y[train], p.vocab.buckets)
                                    for m in MEDIANS}
    models["transformer"], info = train_encoder(cfg, p.windows(train, window), p.windows(val, window), fit,
                                                p.vocab.buckets, progress)
    q_val = {m: predict_last(mod, *p.windows(val, window)) for m, mod in models.items()}
    q_test = {m: predict_last(mod, *p.windows(test, window)) for m, mod in models.items()}
    y_val, y_test = p.y[val], p.y[test]
    reference, best = choose({m: float(np.mean(np.abs(y_val - q[:, 1]))) for m, q in q_val.items()})
    collapsed = len(np.unique(np.round(q_val["transformer"][:, 1], 4))) <= 1
    family = "transformer" if best == "transformer" and not collapsed else reference
    metrics = {"val": score(y_val, q_val[family], q_val[reference], q_val["median"]),
               "test": score(y_test, q_test[family], q_test[reference], q_test["median"])}
    candidates = {m: {"val_mae": float(np.mean(np.abs(y_val - q_val[m][:, 1]))),
                      "test_mae": float(np.mean(np.abs(y_test - q_test[m][:, 1])))} for m in models}
    residual = y_val - q_val[family][:, 1]
    card = {
        "kind": TX_KIND, "name": name, "family": family, "target": TX_KIND, "eps": EPS, "window": window,
        "horizon": 0, "features": list(NUM_FEATURES), "quantiles": list(QUANTILES), "vocab": p.vocab.to_card(),
        "inputs": list(TX_INPUTS), "output": TX_OUTPUT, "reference": reference, "collapsed": collapsed,
        "config": asdict(cfg) if family == "transformer" else None, "encoder_epochs": info["epochs"],
        "metrics": metrics, "candidates": candidates,
        "constant": [float(v) for v in np.quantile(p.y[train], QUANTILES)],
        "alert_residuals": {"levels": list(ALERT_LEVELS),
                            "values": [float(v) for v in np.quantile(residual, ALERT_LEVELS)]},
        "rows": {"train": len(train), "val": len(val), "test": len(test)},
    }
    sample = val[: min(len(val), 64)]
    return TxBuild(models[family], card, masked_inputs(*p.windows(sample, window)))


def export_tx_checked(build: TxBuild) -> tuple[bytes, dict[str, Any]]:
    onnx_bytes = export_tx(build.module, build.card["window"])
    diff = tx_parity(build.module, onnx_bytes, build.inputs)
    return onnx_bytes, {**build.card, "parity_max_abs_diff": diff}


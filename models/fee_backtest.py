"""The block backtest: fee forecasters beside persistence and EIP-1559 on one block series.

One series, split by block order: train | validation | test (70 / 15 / 15 %), an
embargo of ``horizon`` blocks before each later split so no train target overlaps
them. Long series are thinned for training only (every k-th window up to
``max_train`` rows); validation and test keep every block. Every model is scored on
the same test rows with the market backtest's metrics (``models.evaluate.metrics``),
plus ``skill_vs_reference``: 1 - MAE / MAE of the target's reference (EIP-1559 for the
base fee, persistence for fullness). What would be served (``selected``) is chosen
on the validation rows only: the best validation skill over the reference, if it is
positive; else the reference itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chaincast.models.evaluate import METRICS, metrics
from chaincast.models.fee_models import FEE_LEARNED, FeeFit, baselines_for, fit_fee_model, predict_chunked
from chaincast.models.fees import FEE_TARGETS, REFERENCE, BlockSamples, block_samples

SPLITS = (0.70, 0.15, 0.15)


@dataclass
class FeeBacktestReport:
    horizon: int
    target: str
    rows: int
    results: list[dict[str, Any]]
    selected: str
    reference: str
    first_block: int = 0
    last_block: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The market backtest's schema, plus the reference, the selection rule and the blocks used."""
        return {"horizon": self.horizon, "target": self.target, "rows": self.rows, "results": self.results,
                "selected": self.selected, "selected_on": "validation", "reference": self.reference,
                "blocks": {"first": self.first_block, "last": self.last_block, "refused": self.refused}}


def split(s: BlockSamples, horizon: int, max_train: int | None) -> tuple[BlockSamples, BlockSamples, BlockSamples]:
    n = len(s)
    a, b = int(n * SPLITS[0]), int(n * (SPLITS[0] + SPLITS[1]))
    if a < 50 or b - a - horizon < 20 or n - b - horizon < 20:
        raise ValueError(f"{n} windows are too few for train | validation | test")
    stride = 1 if max_train is None or a <= max_train else -(-a // max_train)
    return s.take(slice(0, a, stride)), s.take(slice(a + horizon, b)), s.take(slice(b + horizon, n))


def select(results: list[dict[str, Any]], reference: str, min_skill: float = 0.0) -> str:
    """The model that would be served: the best validation skill over the reference above ``min_skill``.

    >>> select([{"model": "eip1559", "val_skill_vs_reference": 0.0},
    ...         {"model": "gru", "val_skill_vs_reference": 0.02}], "eip1559")
    'gru'
    >>> select([{"model": "linear", "val_skill_vs_reference": -0.1}], "eip1559")
    'eip1559'
    """
    floor = max(min_skill, 0.0)
    winners = [r for r in results if r["model"] != reference and r["val_skill_vs_reference"] > floor]
    return max(winners, key=lambda r: r["val_skill_vs_reference"])["model"] if winners else reference


def _skill(mae: float, ref_mae: float, same: bool) -> float:
    return 0.0 if same or ref_mae == 0 else 1.0 - mae / ref_mae


def fee_backtest(
    blocks: np.ndarray,
    horizon: int = 1,
    target: str = "base_fee",
    models: tuple[str, ...] = FEE_LEARNED,
    window: int = 32,
    max_train: int | None = 200_000,
    options: FeeFit | None = None,
    progress: Callable[[str], None] | None = None,
    min_skill: float = 0.0,
) -> FeeBacktestReport:
    """Fit every model on train, score all of them on the same validation and test rows."""
    if target not in FEE_TARGETS:
        raise ValueError(f"unknown fee target {target!r}; choose from {', '.join(FEE_TARGETS)}")
    base = baselines_for(target)
    unknown = [m for m in models if m not in FEE_LEARNED and m not in base]
    if unknown:
        raise ValueError(f"unknown fee model(s) {unknown}; choose from {', '.join((*base, *FEE_LEARNED))}")
    reference = REFERENCE[target]
    s = block_samples(blocks, window, horizon, target)
    train, val, test = split(s, horizon, max_train)
    names = list(dict.fromkeys([*base, *models]))
    preds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    seconds: dict[str, float] = {}
    for m in names:
        if progress is not None:
            progress(f"{target} h={horizon}: fitting {m} on {len(train)} windows")
        started = time.monotonic()
        model = fit_fee_model(m, train, val, target, horizon, options)
        preds[m] = (predict_chunked(model, val), predict_chunked(model, test))
        seconds[m] = round(time.monotonic() - started, 1)
    y_val, y_test = val.y.astype(np.float64), test.y.astype(np.float64)
    results = []
    for m in names:
        p_val, p_test = preds[m]
        row = metrics(y_test, p_test, preds["persistence"][1])
        out = {"model": m, **{k: row[k] for k in METRICS}}
        ref_val, ref_test = preds[reference]
        out["skill_vs_reference"] = _skill(row["mae"], float(np.mean(np.abs(y_test - ref_test[:, 0]))),
                                           np.array_equal(p_test[:, 0], ref_test[:, 0]))
        if "eip1559" in preds:
            eip = preds["eip1559"][1][:, 0]
            out["skill_vs_eip1559"] = _skill(row["mae"], float(np.mean(np.abs(y_test - eip))),
                                             np.array_equal(p_test[:, 0], eip))
        val_mae = float(np.mean(np.abs(y_val - p_val[:, 0])))
        out["val_mae"] = val_mae
        out["val_skill_vs_reference"] = _skill(val_mae, float(np.mean(np.abs(y_val - ref_val[:, 0]))),
                                               np.array_equal(p_val[:, 0], ref_val[:, 0]))
        out["fit_seconds"] = seconds[m]
        results.append(out)
    return FeeBacktestReport(horizon, target, len(y_test), results, select(results, reference, min_skill),
                             reference, int(test.number[0]), int(test.number[-1]))


def format_fee_table(report: FeeBacktestReport) -> str:
    """A plain-text table (the CLI prints it)."""
    ref = report.reference
    head = (f"{'model':<12} {'mae':>11} {'rmse':>11} {'dir_acc':>8} {'skill_p':>8} "
            f"{'skill_ref':>9} {'val_skill':>9} {'cov_80':>7}")
    lines = [f"target {report.target}, horizon {report.horizon} blocks, {report.rows} test rows "
             f"(blocks {report.first_block}..{report.last_block}); reference {ref}, selected on validation",
             head, "-" * len(head)]
    for r in report.results:
        mark = "  <- selected" if r["model"] == report.selected else ""
        lines.append(f"{r['model']:<12} {r['mae']:>11.4e} {r['rmse']:>11.4e} {r['directional_accuracy']:>8.4f} "
                     f"{r['skill_vs_persistence']:>+8.4f} {r['skill_vs_reference']:>+9.4f} "
                     f"{r['val_skill_vs_reference']:>+9.4f} {r['coverage_80']:>7.3f}{mark}")
    return "\n".join(lines)

"""Walk-forward backtest: train on a window of bars, test on the next one, roll forward.

Every model is scored on the same test rows as persistence and EMA drift, and
the gate picks what would be served: the best model with positive skill vs
persistence, else persistence itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chaincast.models.baselines import BASELINES
from chaincast.models.dataset import Samples, samples, split_by_time
from chaincast.models.evaluate import METRICS, metrics, predict
from chaincast.models.families import FAMILIES, LEARNED
from chaincast.models.train import FitOptions, fit_module

# Enough to find what 1-minute data offers without making a backtest take an hour on 2 cores.
BACKTEST_FIT = FitOptions(max_epochs=6, patience=2, batch_size=256, lr=2e-3)


@dataclass
class Fold:
    train: Samples
    val: Samples
    test: Samples


@dataclass
class BacktestReport:
    horizon: int
    target: str
    rows: int
    results: list[dict[str, Any]]
    selected: str
    last_test: Samples | None = None  # the last fold's test rows, for the plot
    last_pred: dict[str, np.ndarray] = field(default_factory=dict)  # model -> (N, 4) on last_test

    def to_json(self) -> dict[str, Any]:
        """The schema of issue 5, nothing more."""
        return {"horizon": self.horizon, "target": self.target, "rows": self.rows,
                "results": self.results, "selected": self.selected}


def walk_forward(s: Samples, horizon: int, folds: int, train_frac: float) -> list[Fold]:
    """Folds of one series: a fixed-length train window (its last 15 % validates), then a test window."""
    n = len(s)
    test_len = int(n * (1 - train_frac) / folds)
    train_len = n - folds * test_len
    if test_len <= horizon + 1 or train_len < 100:
        raise ValueError(f"{n} samples are too few for {folds} walk-forward folds")
    out = []
    for k in range(folds):
        start = k * test_len
        inner = split_by_time(s.take(start, start + train_len), horizon, val=0.15, test=0.0)
        test = s.take(start + train_len + horizon, start + train_len + test_len)  # embargo of h rows
        out.append(Fold(inner.train, inner.val, test))
    return out


def gate(results: list[dict[str, Any]], min_skill: float = 0.0) -> str:
    """The model that would be served: best skill above ``min_skill`` (>= 0), else persistence.

    Skill of a few 1e-4 is within noise on a month of minutes; a margin keeps the
    gate from serving luck.

    >>> gate([{"model": "persistence", "skill_vs_persistence": 0.0}, {"model": "gru", "skill_vs_persistence": -0.1}])
    'persistence'
    >>> gate([{"model": "lstm", "skill_vs_persistence": 0.01}, {"model": "gru", "skill_vs_persistence": 0.02}])
    'gru'
    """
    floor = max(min_skill, 0.0)  # never below zero: negative skill is never served
    winners = [r for r in results if r["model"] != "persistence" and r["skill_vs_persistence"] > floor]
    return max(winners, key=lambda r: r["skill_vs_persistence"])["model"] if winners else "persistence"


def backtest(
    bars_list: list[np.ndarray],
    horizon: int = 1,
    models: tuple[str, ...] = LEARNED,
    window: int = 32,
    target: str = "log_return",
    folds: int = 3,
    train_frac: float = 0.5,
    seed: int = 0,
    options: FitOptions | None = None,
    progress: Callable[[str], None] | None = None,
    min_skill: float = 0.0,
) -> BacktestReport:
    """Run the walk-forward backtest of ``models`` beside the baselines over every series."""
    unknown = [m for m in models if m not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {', '.join(FAMILIES)}")
    names = list(dict.fromkeys([*BASELINES, *models]))  # baselines first, always
    per_series = [walk_forward(samples(b, window, horizon, target), horizon, folds, train_frac) for b in bars_list]
    preds: dict[str, list[np.ndarray]] = {m: [] for m in names}
    ys: list[np.ndarray] = []
    report = BacktestReport(horizon, target, 0, [], "persistence")
    for k in range(folds):
        train = Samples.concat([f[k].train for f in per_series])
        val = Samples.concat([f[k].val for f in per_series])
        test = Samples.concat([f[k].test for f in per_series])
        ys.append(test.y.astype(np.float64))
        for m in names:
            if progress is not None:
                progress(f"fold {k + 1}/{folds}: {m}")
            module, _, _ = fit_module(m, train, val, window, horizon, target, seed, options or BACKTEST_FIT)
            preds[m].append(predict(module, test.x))
        report.last_test = test
        report.last_pred = {m: preds[m][-1] for m in names}
    y = np.concatenate(ys)
    persistence = np.concatenate(preds["persistence"])
    for m in names:
        row = metrics(y, np.concatenate(preds[m]), persistence)
        report.results.append({"model": m, **{k: row[k] for k in METRICS}})
    report.rows = len(y)
    report.selected = gate(report.results, min_skill)
    return report


def format_table(report: BacktestReport) -> str:
    """A plain-text table of the results (the CLI prints it)."""
    head = f"{'model':<12} {'mae':>11} {'rmse':>11} {'dir_acc':>8} {'skill':>8} {'cov_80':>7}"
    lines = [f"horizon {report.horizon}, target {report.target}, {report.rows} test rows", head, "-" * len(head)]
    for r in report.results:
        mark = "  <- selected" if r["model"] == report.selected else ""
        lines.append(
            f"{r['model']:<12} {r['mae']:>11.4e} {r['rmse']:>11.4e} {r['directional_accuracy']:>8.4f} "
            f"{r['skill_vs_persistence']:>+8.4f} {r['coverage_80']:>7.3f}{mark}"
        )
    return "\n".join(lines)

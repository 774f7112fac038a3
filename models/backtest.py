"""Walk-forward backtest: train on a window of bars, test on the next one, roll forward.

Every model is scored on the same test rows as the references (persistence,
EMA drift, HAR-RV). Folds are cut at the same instants for every series (one
global clock). Each model's band is calibrated online (adaptive conformal,
``models.conformal``) per series: through the fold's validation rows, then
its test rows, carrying the state fold to fold, exactly as the stream would.

``selected`` is what would be served, and it is chosen on VALIDATION rows
only (each fold's inner validation split, pooled over folds): the model with
the best validation score (MAE for returns, QLIKE for volatility) if it beats
the reference there (persistence for returns, HAR for volatility), else the
reference. Its test score is then reported as it comes, and may fall below
the reference: that is the honest out-of-sample risk of choosing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chaincast.models.conformal import AdaptiveConformal, calibrate
from chaincast.models.dataset import Samples, samples, split_at_times, time_cuts
from chaincast.models.evaluate import metric_names, metrics, predict, qlike_rows
from chaincast.models.families import FAMILIES, LEARNED, REFERENCES
from chaincast.models.features import EXTRA_GROUPS, canonical_groups
from chaincast.models.history import CHAIN_TX_COUNT
from chaincast.models.targets import TARGETS
from chaincast.models.train import FitOptions, fit_module

# Enough to find what 1-minute data offers without making a backtest take an hour on 2 cores.
BACKTEST_FIT = FitOptions(max_epochs=6, patience=2, batch_size=256, lr=2e-3)
REFERENCE = {"log_return": "persistence", "volatility": "har"}
SELECTION_METRIC = {"log_return": "mae", "volatility": "qlike"}
ABLATION_MODELS: tuple[str, ...] = ("linear", "lightgbm")  # the ablation's families: quick, and they use every input


@dataclass
class Fold:
    train: list[Samples]  # one per series
    val: list[Samples]
    test: list[Samples]


@dataclass
class BacktestReport:
    horizon: int
    target: str
    rows: int
    results: list[dict[str, Any]]
    selected: str
    reference: str = "persistence"
    groups: tuple[str, ...] = ("base",)
    folds: list[dict[str, Any]] = field(default_factory=list)  # per fold and model: skill, coverage
    calibration: dict[str, list[float]] = field(default_factory=dict)  # model -> share below q10, q50, q90
    ablation: list[dict[str, Any]] = field(default_factory=list)
    last_test: Samples | None = None  # the last fold's test rows of the first series, for charts
    last_pred: dict[str, np.ndarray] = field(default_factory=dict)  # model -> (N, 4) calibrated, on last_test

    def to_json(self) -> dict[str, Any]:
        """Issue 5's schema plus the reference, the selection's provenance, folds, calibration, ablation."""
        return {"horizon": self.horizon, "target": self.target, "rows": self.rows, "results": self.results,
                "selected": self.selected, "selected_on": "validation", "reference": self.reference,
                "selection_metric": SELECTION_METRIC[self.target], "feature_groups": list(self.groups),
                "calibration": {"method": "adaptive_conformal", "alpha": 0.2,
                                "share_below_q10_q50_q90": self.calibration},
                "folds": self.folds, "ablation": self.ablation}


def walk_forward(series: list[Samples], horizon: int, folds: int, train_frac: float) -> list[Fold]:
    """Folds cut on the pooled clock: a fixed-length train window (its last 15 % validates), then a test window."""
    ts = np.sort(np.concatenate([s.ts for s in series])) if series else np.zeros(0)
    n = len(ts)
    test_len = int(n * (1 - train_frac) / folds)
    train_len = n - folds * test_len
    if test_len <= horizon + 1 or train_len < 100 * max(len(series), 1):
        raise ValueError(f"{n} samples are too few for {folds} walk-forward folds")
    out = []
    for k in range(folds):
        start, val_at, test_at = k * test_len, k * test_len + int(train_len * 0.85), k * test_len + train_len
        stop = min(test_at + test_len, n - 1)
        cuts = [float(ts[start]), float(ts[val_at]), float(ts[test_at]), float(ts[stop]) + 1]
        parts = [split_at_times(s, cuts, horizon)[1:4] for s in series]  # drop rows before the window
        fold = Fold(*([p[i] for p in parts] for i in range(3)))
        if not sum(len(s) for s in fold.train) or not sum(len(s) for s in fold.val):
            raise ValueError(f"fold {k + 1} has no train or validation rows; use fewer folds")
        out.append(fold)
    return out


def select(val_scores: dict[str, float], reference: str, target: str, min_skill: float = 0.0) -> str:
    """The model to serve from VALIDATION scores (lower is better): best, if it beats the reference.

    For returns a challenger must also beat the reference's MAE by ``min_skill`` (a fraction).

    >>> select({"persistence": 1.0, "gru": 1.1, "linear": 0.99}, "persistence", "log_return")
    'linear'
    >>> select({"persistence": 1.0, "linear": 0.999}, "persistence", "log_return", min_skill=0.01)
    'persistence'
    >>> select({"har": -14.0, "lightgbm": -14.1, "persistence": -12.0}, "har", "volatility")
    'lightgbm'
    """
    best = min(val_scores, key=lambda m: (val_scores[m], m != reference))
    ref = val_scores[reference]
    if best == reference:
        return reference
    if target == "log_return" and val_scores[best] >= ref * (1 - max(min_skill, 0.0)):
        return reference
    return best


def _score(y: np.ndarray, pred: np.ndarray, target: str) -> float:
    return float(np.mean(qlike_rows(y, pred[:, 0]))) if target == "volatility" else float(np.mean(np.abs(y - pred[:, 0])))


def _prepare(bars_list: list[np.ndarray], horizon: int, window: int, target: str, groups: tuple[str, ...],
             folds: int, train_frac: float) -> list[Fold]:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    longest = max((len(b) for b in bars_list), default=0)
    if horizon >= longest:
        raise ValueError(f"horizon {horizon} is longer than the data ({longest} bars)")
    leader = bars_list[0] if bars_list else None
    series = [samples(b, window, horizon, target, groups, leader) for b in bars_list]
    return walk_forward(series, horizon, folds, train_frac)


def _run(per_fold: list[Fold], names: list[str], horizon: int, window: int, target: str, seed: int,
         options: FitOptions, progress: Callable[[str], None] | None) -> dict[str, Any]:
    """Fit every model per fold; calibrated val and test predictions per model, pooled in a fixed order."""
    n_series = len(per_fold[0].train)
    states = {(m, i): AdaptiveConformal() for m in names for i in range(n_series)}
    val_y: list[np.ndarray] = []
    test_y: list[np.ndarray] = []
    val_p: dict[str, list[np.ndarray]] = {m: [] for m in names}
    test_p: dict[str, list[np.ndarray]] = {m: [] for m in names}
    fold_rows: list[dict[str, Any]] = []
    last: dict[str, np.ndarray] = {}
    for k, fold in enumerate(per_fold):
        train = Samples.concat(fold.train)
        val = Samples.concat(fold.val)
        val_y.append(val.y.astype(np.float64))
        test_y.append(np.concatenate([t.y for t in fold.test]).astype(np.float64))
        fold_test = {}
        for m in names:
            if progress is not None:
                progress(f"fold {k + 1}/{len(per_fold)}: {m}")
            model, _, _ = fit_module(m, train, val, window, horizon, target, seed, options)
            vparts, tparts = [], []
            for i in range(n_series):  # conformal state runs per series, in time order: val then test
                st = states[(m, i)]
                if len(fold.val[i]):
                    vp, st = calibrate(fold.val[i].y.astype(np.float64), predict(model, fold.val[i].x), horizon, st)
                    vparts.append(vp)
                if len(fold.test[i]):
                    tp, st = calibrate(fold.test[i].y.astype(np.float64), predict(model, fold.test[i].x), horizon, st)
                    tparts.append(tp)
                    if i == 0:
                        last[m] = tp
                states[(m, i)] = st
            val_p[m].append(np.concatenate(vparts) if vparts else np.zeros((0, 4)))
            fold_test[m] = np.concatenate(tparts) if tparts else np.zeros((0, 4))
            test_p[m].append(fold_test[m])
        pers = fold_test["persistence"]
        for m in names:
            row = metrics(test_y[-1], fold_test[m], pers, target)
            fold_rows.append({"fold": k + 1, "model": m, "rows": len(test_y[-1]),
                              "skill_vs_persistence": row["skill_vs_persistence"], "coverage_80": row["coverage_80"],
                              "interval_score_80": row["interval_score_80"], **({"qlike": row["qlike"]} if "qlike" in row else {})})
    return {"val_y": np.concatenate(val_y), "test_y": np.concatenate(test_y),
            "val_p": {m: np.concatenate(v) for m, v in val_p.items()},
            "test_p": {m: np.concatenate(v) for m, v in test_p.items()},
            "folds": fold_rows, "last": last, "last_test": per_fold[-1].test[0]}


def _results(run: dict[str, Any], names: list[str], target: str) -> tuple[list[dict[str, Any]], dict[str, float]]:
    y, persistence = run["test_y"], run["test_p"]["persistence"]
    keys = metric_names(target)
    val_scores = {m: _score(run["val_y"], run["val_p"][m], target) for m in names}
    out = []
    for m in names:
        row = metrics(y, run["test_p"][m], persistence, target)
        out.append({"model": m, **{k: row[k] for k in keys}, "validation_score": val_scores[m]})
    return out, val_scores


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
    groups: tuple[str, ...] = ("base",),
    ablation: bool = False,
) -> BacktestReport:
    """Run the walk-forward backtest of ``models`` beside the references over every series."""
    unknown = [m for m in models if m not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {', '.join(FAMILIES)}")
    groups = canonical_groups(groups)
    opts = options or BACKTEST_FIT
    names = list(dict.fromkeys([*REFERENCES, *models]))  # references first, always
    per_fold = _prepare(bars_list, horizon, window, target, groups, folds, train_frac)
    run = _run(per_fold, names, horizon, window, target, seed, opts, progress)
    results, val_scores = _results(run, names, target)
    reference = REFERENCE[target]
    report = BacktestReport(horizon, target, len(run["test_y"]), results,
                            select(val_scores, reference, target, min_skill), reference, groups, run["folds"])
    y = run["test_y"]
    report.calibration = {m: [float(np.mean(y < p[:, c])) for c in (1, 2, 3)] for m, p in run["test_p"].items()}
    report.last_test, report.last_pred = run["last_test"], run["last"]
    if ablation:
        report.ablation = run_ablation(bars_list, horizon, window, target, folds, train_frac, seed, opts, progress)
    return report


def run_ablation(bars_list: list[np.ndarray], horizon: int, window: int, target: str, folds: int,
                 train_frac: float, seed: int, options: FitOptions,
                 progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Test scores of ``ABLATION_MODELS`` with base features alone, base + each group, and all groups."""
    has_chain = all(b.shape[1] > CHAIN_TX_COUNT and np.isfinite(b[:, CHAIN_TX_COUNT]).any() for b in bars_list)
    extras = [g for g in EXTRA_GROUPS if g != "chain" or has_chain]
    configs = [("base",), *((("base", g)) for g in extras), ("base", *extras)]
    out: list[dict[str, Any]] = []
    if not has_chain:
        out.append({"groups": ["base", "chain"], "skipped": "the bars carry no chain columns"})
    names = ["persistence", *ABLATION_MODELS]
    for groups in dict.fromkeys(configs):
        if progress is not None:
            progress(f"ablation: {'+'.join(groups)}")
        per_fold = _prepare(bars_list, horizon, window, target, groups, folds, train_frac)
        run = _run(per_fold, names, horizon, window, target, seed, options, None)
        results, _ = _results(run, names, target)
        out.append({"groups": list(groups), "results": results})
    return out


def format_table(report: BacktestReport) -> str:
    """A plain-text table of the results (the CLI prints it)."""
    vol = report.target == "volatility"
    head = (f"{'model':<12} {'mae':>11} {'skill':>8} {'cov_80':>7} {'int_score':>11} {'pinball':>11}"
            + (f" {'qlike':>9}" if vol else "") + f" {'val_score':>11}")
    lines = [f"horizon {report.horizon}, target {report.target}, {report.rows} test rows; "
             f"reference {report.reference}; selected on validation", head, "-" * len(head)]
    for r in report.results:
        mark = "  <- selected" if r["model"] == report.selected else ""
        lines.append(
            f"{r['model']:<12} {r['mae']:>11.4e} {r['skill_vs_persistence']:>+8.4f} {r['coverage_80']:>7.3f} "
            f"{r['interval_score_80']:>11.4e} {r['pinball']:>11.4e}" + (f" {r['qlike']:>9.4f}" if vol else "")
            + f" {r['validation_score']:>11.4e}{mark}"
        )
    for a in report.ablation:
        if "skipped" in a:
            lines.append(f"ablation {'+'.join(a['groups'])}: skipped ({a['skipped']})")
            continue
        cells = ", ".join(f"{r['model']} skill {r['skill_vs_persistence']:+.4f}"
                          + (f" qlike {r['qlike']:.4f}" if vol else "") for r in a["results"])
        lines.append(f"ablation {'+'.join(a['groups'])}: {cells}")
    return "\n".join(lines)

"""Backtest of the transaction-value models: time-ordered folds, every family on the same rows.

Families: ``median`` (global), ``sender_median`` and ``receiver_median`` (from the
training rows), ``linear`` and ``lightgbm`` on the per-transaction features (the
same ids and NUM_FEATURES the encoder sees, one row each), and ``transformer``
(models.tx_encoder). ``reference`` is the median family with the lowest
validation MAE; ``selected`` is the family with the lowest validation MAE if it
beats the reference there, else the reference: chosen on validation rows only,
then reported on the test rows.

The JSON is the market backtest's schema (``horizon`` 0: the forecast is of
the transaction itself; ``skill_vs_persistence`` is skill vs the reference,
which plays persistence's role here) plus ``selected_on``, ``reference``,
``refused`` and per-family validation scores and the zero/non-zero split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from chaincast.models.evaluate import METRICS, metrics, pinball
from chaincast.models.targets import TX_TARGET  # noqa: F401 - re-exported
from chaincast.models.tx_encoder import (QUANTILES, TxEncoderConfig, TxFit, median_model, predict_last,
                                         train_encoder)
from chaincast.models.txs import EPS, TxTable, Vocab, target, tokens, windows

MEDIANS: tuple[str, ...] = ("median", "sender_median", "receiver_median")
ALL_FAMILIES: tuple[str, ...] = (*MEDIANS, "linear", "lightgbm", "transformer")
ZERO_CUT = float(np.log(1e-5 + EPS))  # a forecast below 1e-5 ETH calls the transaction "zero value"


@dataclass
class Split:
    """Row indices (into the table) of one time-ordered fold."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def time_folds(n: int, window: int, folds: int = 3, train_frac: float = 0.5, val_frac: float = 0.15) -> list[Split]:
    """Walk-forward folds over rows window-1 .. n-1 (each needs window-1 earlier rows of context).

    >>> [(len(s.train), len(s.val), len(s.test)) for s in time_folds(1031, 32, folds=2)]
    [(425, 75, 250), (425, 75, 250)]
    """
    rows = np.arange(window - 1, n)
    test_len = int(len(rows) * (1 - train_frac) / folds)
    train_len = len(rows) - folds * test_len
    val_len = int(train_len * val_frac)
    if test_len < 20 or train_len - val_len < 100:
        raise ValueError(f"{n} transactions are too few for {folds} folds of windows of {window}")
    out = []
    for k in range(folds):
        start = k * test_len
        out.append(Split(rows[start : start + train_len - val_len], rows[start + train_len - val_len : start + train_len],
                         rows[start + train_len : start + train_len + test_len]))
    return out


@dataclass
class Prepared:
    """One fold's inputs: the vocabulary is fitted on the fold's training rows only."""

    vocab: Vocab
    ids: np.ndarray  # (N, 4) for the whole table
    num: np.ndarray  # (N, F)
    y: np.ndarray  # (N,)

    def windows(self, rows: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (windows(self.ids, rows, window), windows(self.num, rows, window),
                windows(self.y.astype(np.float32), rows, window))


def prepare(table: TxTable, train_rows: np.ndarray, min_count: int = 5, buckets: int = 8) -> Prepared:
    vocab = Vocab.fit(table.take(train_rows), min_count, buckets)
    ids, num = tokens(table, vocab)
    return Prepared(vocab, ids, num, target(table.value_eth))


def row_features(p: Prepared, rows: np.ndarray) -> np.ndarray:
    """The per-transaction table for linear and LightGBM: NUM_FEATURES, hour, weekday, known-address flags."""
    ids = p.ids[rows]
    b = p.vocab.buckets
    return np.column_stack([p.num[rows], ids[:, 2:], ids[:, 0] > b, ids[:, 1] > b]).astype(np.float64)


def fit_linear(x: np.ndarray, y: np.ndarray, steps: int = 400, seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """Linear quantile regression (pinball loss, full-batch Adam on standardised features)."""
    torch.manual_seed(seed)
    mu, sd = x.mean(0), np.where(x.std(0) > 1e-9, x.std(0), 1.0)
    xt = torch.from_numpy((x - mu) / sd).float()
    yt = torch.from_numpy(y).float()
    lin = torch.nn.Linear(x.shape[1], 3)
    with torch.no_grad():
        lin.bias.copy_(torch.from_numpy(np.quantile(y, QUANTILES)).float())
        lin.weight.zero_()
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    levels = torch.tensor(QUANTILES)
    for _ in range(steps):
        loss = pinball(yt, lin(xt), levels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def predict(xn: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.sort(lin(torch.from_numpy((xn - mu) / sd).float()).double().numpy(), axis=1)
    return predict


def fit_lightgbm(x: np.ndarray, y: np.ndarray, seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    import lightgbm as lgb  # only the backtest needs it

    boosters = [lgb.LGBMRegressor(objective="quantile", alpha=q, n_estimators=200, learning_rate=0.05,
                                  num_leaves=31, min_child_samples=20, random_state=seed, n_jobs=1, verbose=-1)
                .fit(x, y) for q in QUANTILES]

    def predict(xn: np.ndarray) -> np.ndarray:
        return np.sort(np.column_stack([b.predict(xn) for b in boosters]), axis=1)
    return predict


def score(y: np.ndarray, q: np.ndarray, ref: np.ndarray, const: np.ndarray) -> dict[str, float]:
    """Metrics of quantiles q (N, 3) vs the reference's and the constant's on the same rows."""
    as4 = lambda a: np.column_stack([a[:, 1], a])  # noqa: E731  [y_hat = q50, q10, q50, q90]
    row = metrics(y, as4(q), as4(ref))
    zero = y <= np.log(EPS) + 1e-9
    err = np.abs(y - q[:, 1])
    const_mae = float(np.mean(np.abs(y - const[:, 1])))
    row.update({
        "skill_vs_constant": 1.0 - row["mae"] / const_mae if const_mae > 0 else 0.0,
        "zero_share": float(zero.mean()),
        "mae_zero": float(err[zero].mean()) if zero.any() else float("nan"),
        "mae_nonzero": float(err[~zero].mean()) if (~zero).any() else float("nan"),
        "zero_accuracy": float(np.mean((q[:, 1] < ZERO_CUT) == zero)),
        "distinct_forecasts": int(len(np.unique(np.round(q[:, 1], 6)))),  # 1 = collapsed to a constant
    })
    return row


@dataclass
class TxBacktestReport:
    rows: int
    results: list[dict[str, Any]]
    reference: str
    selected: str
    refused: dict[str, int] = field(default_factory=dict)
    window: int = 32

    def to_json(self) -> dict[str, Any]:
        return {"horizon": 0, "target": TX_TARGET, "rows": self.rows, "results": self.results,
                "selected": self.selected, "selected_on": "validation", "reference": self.reference,
                "window": self.window, "refused": self.refused}


def choose(val_mae: dict[str, float]) -> tuple[str, str]:
    """(reference, selected) from validation MAEs only.

    >>> choose({"median": 2.0, "sender_median": 1.5, "receiver_median": 1.8, "transformer": 1.6})
    ('sender_median', 'sender_median')
    >>> choose({"median": 2.0, "sender_median": 1.5, "receiver_median": 1.8, "lightgbm": 1.2})
    ('sender_median', 'lightgbm')
    """
    reference = min(MEDIANS, key=lambda m: val_mae.get(m, np.inf))
    best = min(val_mae, key=val_mae.__getitem__)
    return reference, best if val_mae[best] < val_mae[reference] else reference


def fold_predictions(table: TxTable, split: Split, window: int, families: tuple[str, ...], fit: TxFit,
                     min_count: int, progress: Callable[[str], None] | None = None
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """family -> (validation quantiles, test quantiles) of one fold."""
    p = prepare(table, split.train, min_count)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    ytr = p.y[split.train]
    for m in families:
        if progress is not None:
            progress(m)
        if m in MEDIANS:
            model = median_model(m, p.vocab.size, p.ids[split.train], ytr, p.vocab.buckets)
            out[m] = (predict_last(model, *p.windows(split.val, window)), predict_last(model, *p.windows(split.test, window)))
        elif m in ("linear", "lightgbm"):
            f = (fit_linear if m == "linear" else fit_lightgbm)(row_features(p, split.train), ytr, seed=fit.seed)
            out[m] = (f(row_features(p, split.val)), f(row_features(p, split.test)))
        elif m == "transformer":
            cfg = TxEncoderConfig(n_addresses=p.vocab.size, window=window)
            model, _ = train_encoder(cfg, p.windows(split.train, window), p.windows(split.val, window), fit,
                                     p.vocab.buckets)
            out[m] = (predict_last(model, *p.windows(split.val, window)), predict_last(model, *p.windows(split.test, window)))
        else:
            raise ValueError(f"unknown family {m!r}; choose from {', '.join(ALL_FAMILIES)}")
    return out


def tx_backtest(table: TxTable, window: int = 32, folds: int = 3, families: tuple[str, ...] = ALL_FAMILIES,
                fit: TxFit | None = None, min_count: int = 5, train_frac: float = 0.5,
                progress: Callable[[str], None] | None = None) -> TxBacktestReport:
    fit = fit or TxFit()
    families = tuple(dict.fromkeys([*MEDIANS, *families]))  # the medians always: the reference is one of them
    y = target(table.value_eth)
    val_q: dict[str, list[np.ndarray]] = {m: [] for m in families}
    test_q: dict[str, list[np.ndarray]] = {m: [] for m in families}
    yv, yt = [], []
    for k, split in enumerate(time_folds(len(table), window, folds, train_frac)):
        say = None if progress is None else (lambda m, k=k: progress(f"fold {k + 1}/{folds}: {m}"))
        for m, (v, t) in fold_predictions(table, split, window, families, fit, min_count, say).items():
            val_q[m].append(v)
            test_q[m].append(t)
        yv.append(y[split.val])
        yt.append(y[split.test])
    y_val, y_test = np.concatenate(yv), np.concatenate(yt)
    val = {m: np.concatenate(v) for m, v in val_q.items()}
    test = {m: np.concatenate(v) for m, v in test_q.items()}
    val_mae = {m: float(np.mean(np.abs(y_val - q[:, 1]))) for m, q in val.items()}
    reference, selected = choose(val_mae)
    results = []
    for m in families:
        row = score(y_test, test[m], test[reference], test["median"])
        vrow = score(y_val, val[m], val[reference], val["median"])
        results.append({"model": m, **{k: row[k] for k in METRICS},
                        **{k: row[k] for k in row if k not in METRICS},
                        "val_mae": vrow["mae"], "val_skill_vs_reference": vrow["skill_vs_persistence"]})
    return TxBacktestReport(len(y_test), results, reference, selected, window=window)


def format_table(report: TxBacktestReport) -> str:
    head = (f"{'model':<16} {'mae':>7} {'val_mae':>7} {'skill_ref':>9} {'skill_c':>8} {'cov_80':>6} "
            f"{'mae_0':>7} {'mae_>0':>7} {'zero_acc':>8} {'distinct':>8}")
    share = report.results[0]["zero_share"] if report.results else float("nan")
    lines = [f"target {TX_TARGET}: log(value_eth + {EPS:g}), {report.rows} test rows ({share:.1%} zero value), "
             f"window {report.window}, reference {report.reference} (chosen on validation)", head, "-" * len(head)]
    for r in report.results:
        mark = "  <- selected" if r["model"] == report.selected else ""
        lines.append(f"{r['model']:<16} {r['mae']:>7.3f} {r['val_mae']:>7.3f} {r['skill_vs_persistence']:>+9.3f} "
                     f"{r['skill_vs_constant']:>+8.3f} {r['coverage_80']:>6.3f} {r['mae_zero']:>7.3f} "
                     f"{r['mae_nonzero']:>7.3f} {r['zero_accuracy']:>8.3f} {r['distinct_forecasts']:>8d}{mark}")
    return "\n".join(lines)

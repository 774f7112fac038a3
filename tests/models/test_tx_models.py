"""Every transaction-value family: train a few steps, export, ONNX-vs-torch parity, load through the registry;
the live context builds the same windows as training; the backtest CLI writes the market schema."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from chaincast.consumers.registry import Registry
from chaincast.deploy.cli import app
from chaincast.models.serving import ModelRejected
from chaincast.models.tx_backtest import ALL_FAMILIES, prepare, time_folds
from chaincast.models.tx_build import export_tx, masked_inputs, tx_parity
from chaincast.models.tx_encoder import TxEncoderConfig, TxFit, median_model, predict_last, train_encoder
from chaincast.models.tx_serving import TxContext, TxForecaster
from chaincast.models.txs import NUM_FEATURES, read_transactions

torch.set_num_threads(1)
TXS = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "chain" / "mainnet_txs_03300000_03302204.csv.gz"
WINDOW = 8


@pytest.fixture(scope="module")
def table():
    t, _ = read_transactions([TXS])
    return t.take(slice(0, 1500))


@pytest.mark.parametrize("family", ["median", "sender_median", "receiver_median", "transformer"])
def test_family_contract(table, family: str, tmp_path: Path) -> None:
    split = time_folds(len(table), WINDOW, folds=1)[0]
    p = prepare(table, split.train)
    if family == "transformer":
        model, info = train_encoder(TxEncoderConfig(p.vocab.size, window=WINDOW, d_model=16, n_layers=1),
                                    p.windows(split.train, WINDOW), p.windows(split.val, WINDOW),
                                    TxFit(epochs=1, max_windows=256))
        assert np.isfinite(info["val_mae"])
    else:
        model = median_model(family, p.vocab.size, p.ids[split.train], p.y[split.train], p.vocab.buckets)
    inputs = masked_inputs(*p.windows(split.test[:16], WINDOW))
    onnx_bytes = export_tx(model, WINDOW)
    assert tx_parity(model, onnx_bytes, inputs) < 1e-3
    card = {"kind": "tx_value", "name": "tx_value", "family": family, "window": WINDOW, "horizon": 0,
            "features": list(NUM_FEATURES),
            "vocab": p.vocab.to_card(), "alert_residuals": {"levels": [0.5, 0.99], "values": [0.0, 3.0]},
            "constant": [0.0, 0.0, 0.0]}
    entry = Registry(tmp_path).put(onnx_bytes, card)
    served = TxForecaster.load(entry.onnx_path, entry.sha256)
    expected = predict_last(model, *p.windows(split.test[:16], WINDOW))
    assert np.allclose(served.run(*inputs), expected, atol=1e-3)
    assert served.threshold(1.0, 0.99) == pytest.approx(4.0)


def test_live_context_builds_the_training_windows(table) -> None:
    """Transactions fed block by block to TxContext give the windows the training code builds."""
    p = prepare(table, np.arange(0, 1000))
    model = median_model("sender_median", p.vocab.size, p.ids[:1000], p.y[:1000], p.vocab.buckets)
    ctx = TxContext(WINDOW)
    got = []
    for block in np.unique(table.block[:300]):
        rows = ctx.observe(table.take(table.block == block))
        k, inputs = ctx.windows(rows, p.vocab)
        if inputs:
            got.append(predict_last(model, inputs[0], inputs[1], inputs[2]))
    rows = np.arange(WINDOW - 1, int(np.sum(np.isin(table.block, np.unique(table.block[:300])))))
    ids, num, y = p.windows(rows, WINDOW)
    assert np.array_equal(np.concatenate(got), predict_last(model, ids, num, y))


def test_tampered_or_foreign_models_are_refused(table, tmp_path: Path) -> None:
    p = prepare(table, np.arange(0, 1000))
    model = median_model("median", p.vocab.size, p.ids[:1000], p.y[:1000], p.vocab.buckets)
    onnx_bytes = export_tx(model, WINDOW)
    card = {"kind": "tx_value", "family": "median", "window": WINDOW, "features": list(NUM_FEATURES),
            "vocab": p.vocab.to_card(), "alert_residuals": {"levels": [0.5], "values": [0.0]}, "constant": [0, 0, 0]}
    registry = Registry(tmp_path)
    foreign = registry.put(onnx_bytes, {**card, "kind": "forecaster"})
    with pytest.raises(ModelRejected, match="not a tx_value card"):
        TxForecaster.load(foreign.onnx_path)
    good = Registry(tmp_path / "good").put(onnx_bytes, card)
    with pytest.raises(ModelRejected, match="not the one announced"):
        TxForecaster.load(good.onnx_path, expected_sha256="0" * 64)
    old_features = Registry(tmp_path / "f").put(onnx_bytes, {**card, "features": ["log_gas"]})
    with pytest.raises(ModelRejected, match="card features"):
        TxForecaster.load(old_features.onnx_path)
    good.onnx_path.chmod(0o644)
    good.onnx_path.write_bytes(onnx_bytes[:-1] + b"x")
    with pytest.raises(ModelRejected, match="not the one announced"):
        TxForecaster.load(good.onnx_path)


def test_cli_backtest_writes_the_schema(tmp_path: Path) -> None:
    small = tmp_path / "txs.csv"
    with gzip.open(TXS, "rt") as fh:
        small.write_text("".join(line for _, line in zip(range(1201), fh)))
    out = tmp_path / "bt.json"
    result = CliRunner().invoke(app, ["backtest", "--data", str(small), "--target", "tx_value", "--window", "8",
                                      "--folds", "1", "--models", "median,linear,lightgbm", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert {"horizon", "target", "rows", "results", "selected"} <= set(report)
    assert report["target"] == "tx_value" and report["selected_on"] == "validation"
    assert [r["model"] for r in report["results"]] == ["median", "sender_median", "receiver_median", "linear",
                                                       "lightgbm"]
    assert report["reference"] in ("median", "sender_median", "receiver_median")
    by = {r["model"]: r for r in report["results"]}
    assert by[report["reference"]]["skill_vs_persistence"] == 0.0  # skill is measured against the reference
    assert set(by) <= set(ALL_FAMILIES)
    for r in report["results"]:
        assert {"mae", "rmse", "coverage_80", "zero_share", "mae_zero", "mae_nonzero", "val_mae"} <= set(r)
    # The selected family is the best on validation (or the reference when nothing beats it there).
    best = min(report["results"], key=lambda r: r["val_mae"])
    assert report["selected"] == (best["model"] if best["val_mae"] < by[report["reference"]]["val_mae"]
                                  else report["reference"])


@pytest.mark.parametrize("content", ["", "block,value\n1,2\n"])
def test_cli_unusable_file_is_a_one_line_error(tmp_path: Path, content: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(content)
    result = CliRunner().invoke(app, ["backtest", "--data", str(p), "--target", "tx_value"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["backtest", "--data", str(p), "--target", "tx_value", "--models", "gru"])
    assert result.exit_code == 2

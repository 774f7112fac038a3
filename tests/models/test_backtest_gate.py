"""Walk-forward backtest on a real slice of tests/fixtures/data/market: schema, baselines, gate."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from chaincast.deploy.models_cli import app
from chaincast.models.backtest import backtest, gate
from chaincast.models.evaluate import METRICS
from chaincast.models.train import FitOptions
from tests.models.model_fixtures import btc_2023, market  # noqa: F401 (pytest fixtures)

QUICK = FitOptions(max_epochs=2, patience=1, max_steps_per_epoch=8)


def _check_schema(doc: dict, horizon: int, target: str, models: list[str]) -> None:
    assert set(doc) == {"horizon", "target", "rows", "results", "selected"}
    assert doc["horizon"] == horizon and doc["target"] == target and doc["rows"] > 0
    assert [r["model"] for r in doc["results"]] == ["persistence", "ema_drift", *models]
    for r in doc["results"]:
        assert set(r) == {"model", *METRICS}
        assert all(isinstance(r[k], float) and math.isfinite(r[k]) for k in METRICS)
        assert 0 <= r["coverage_80"] <= 1 and 0 <= r["directional_accuracy"] <= 1
    assert doc["results"][0]["skill_vs_persistence"] == 0.0
    skill = {r["model"]: r["skill_vs_persistence"] for r in doc["results"]}
    assert doc["selected"] in skill
    assert doc["selected"] == "persistence" or skill[doc["selected"]] > 0  # never a negative-skill model
    assert doc["selected"] == gate(doc["results"])


@pytest.mark.parametrize("target", ["log_return", "volatility"])
def test_backtest_on_real_slice(btc_2023: np.ndarray, target: str) -> None:
    bars = btc_2023[9000:15000]  # 2023-03-22..26, includes the real 1.3 h gap of 03-24
    models = ["linear", "gru"]
    report = backtest([bars], horizon=5, models=tuple(models), window=16, target=target, folds=2, options=QUICK)
    doc = json.loads(json.dumps(report.to_json()))
    _check_schema(doc, 5, target, models)


def test_gate_never_serves_negative_skill() -> None:
    rows = [{"model": "persistence", "skill_vs_persistence": 0.0}, {"model": "ema_drift", "skill_vs_persistence": -0.2},
            {"model": "gru", "skill_vs_persistence": -1e-9}]
    assert gate(rows) == "persistence"
    assert gate([*rows, {"model": "lstm", "skill_vs_persistence": 1e-9}]) == "lstm"
    assert gate([*rows, {"model": "lstm", "skill_vs_persistence": 1e-9}], min_skill=1e-3) == "persistence"
    assert gate(rows, min_skill=-1.0) == "persistence"  # a negative margin cannot let negative skill through


def test_cli_backtest_writes_the_schema(tmp_path: Path, market: Path) -> None:
    src = market / "binance_ETHUSDT_1m_2023-03.csv.gz"
    small = tmp_path / "ETHUSDT_small.csv"  # the first 3,000 bars, as a headered CSV
    with gzip.open(src, "rt") as fh:
        small.write_text("".join(line for _, line in zip(range(3001), fh)))
    out = tmp_path / "bt.json"
    result = CliRunner().invoke(app, ["backtest", "--data", str(small), "--models", "linear", "--window", "8",
                                      "--folds", "1", "--json", str(out), "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    assert "persistence" in result.output
    _check_schema(json.loads(out.read_text()), 1, "log_return", ["linear"])


@pytest.mark.parametrize("args", [
    ["backtest", "--data", "missing.csv"],
    ["backtest", "--data", "x", "--models", "gru,forest"],
    ["train", "--data", "x", "--model", "forest"],
    ["train", "--data", "x", "--horizon", "0"],
])
def test_cli_bad_arguments_are_one_line_errors(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output

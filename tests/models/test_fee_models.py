"""Fee models on real mainnet blocks: readers refuse bad rows, EIP-1559 is exact, every family exports and loads."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chaincast.consumers.registry import Registry
from chaincast.models.blocks import BASE_FEE, NUMBER, TIMESTAMP, BlockFormatError, is_block_file, load_blocks
from chaincast.models.fee_backtest import fee_backtest
from chaincast.models.fee_build import build_fee_model
from chaincast.models.fee_models import FeeFit
from chaincast.models.fees import EIP1559_STEP, FEE_FEATURES, block_features, block_samples, next_base_fee
from chaincast.models.serving import Forecaster, ModelRejected
from tests.conftest import TEST_DATA

CSV = TEST_DATA / "chain" / "mainnet_blocks_18640000_18643999.csv.gz"
JSON = TEST_DATA / "chain" / "blocks_24337593_24338592.json"
TINY = FeeFit(max_epochs=1, max_steps_per_epoch=5, lgbm_trees=10)


@pytest.fixture(scope="module")
def blocks() -> np.ndarray:
    return load_blocks(CSV).blocks


def test_readers_take_the_shared_csv_and_the_json_series(blocks: np.ndarray) -> None:
    assert len(blocks) == 4000 and np.all(np.diff(blocks[:, NUMBER]) == 1)
    gaps = np.diff(blocks[:, TIMESTAMP])
    assert set(np.unique(gaps)) >= {12.0, 24.0}  # missed slots stay gaps in time, numbers stay contiguous
    series = load_blocks(JSON)
    assert len(series) == 1000 and not series.refused
    assert is_block_file(CSV) and is_block_file(JSON)
    assert not is_block_file(TEST_DATA / "market" / "binance_BTCUSDT_1m_2023-03.csv.gz")


def test_bad_rows_are_refused_with_a_count(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("number,timestamp,base_fee_per_gas,gas_used,gas_limit,tx_count_relay,mev_value_wei\n"
                    "10,120,1000000000,15000000,30000000,100,\n"
                    "11,132,1000000000,15000000,0,100,\n"  # zero gas limit
                    "12,144,,15000000,30000000,,\n"  # no base fee (pre-London)
                    "13,156,1000000000,15000000,30000000,,\n"
                    "13,156,1000000000,15000000,30000000,,\n"  # a duplicate number
                    "12,170,1000000000,15000000,30000000,,\n"  # going backwards
                    "14,,1000000000,15000000,30000000,,\n"  # missing timestamp
                    "15,180,abc,15000000,30000000,,\n")  # unparsable
    series = load_blocks(path)
    assert series.blocks[:, NUMBER].tolist() == [10.0, 13.0]
    assert dict(series.refused) == {"zero_gas_limit": 1, "no_base_fee": 1, "non_monotonic_number": 2,
                                    "missing_field": 1, "unparsable": 1}
    assert "6 rows refused" in series.summary()


def test_missing_columns_or_no_usable_row_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BlockFormatError, match="missing column.*base_fee_per_gas"):
        load_blocks(TEST_DATA / "chain" / "blocks.csv")  # real blocks, but no base fee column
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps([{"number": 1, "timestamp": 1, "base_fee_per_gas": None, "gas_used": 1,
                                  "gas_limit": 2}]))
    with pytest.raises(BlockFormatError, match="no usable block.*no_base_fee 1"):
        load_blocks(empty)


def test_the_eip1559_rule_gives_the_next_base_fee_of_real_blocks(blocks: np.ndarray) -> None:
    from chaincast.models.blocks import GAS_LIMIT, GAS_USED

    predicted = next_base_fee(blocks[:-1, BASE_FEE], blocks[:-1, GAS_USED], blocks[:-1, GAS_LIMIT])
    exact = np.abs(predicted - blocks[1:, BASE_FEE]) <= 1
    assert exact.mean() > 0.99
    step = block_features(blocks)[:-1, EIP1559_STEP]  # the feature the h = 1 reference reads
    assert np.mean(np.abs(step - np.log(blocks[1:, BASE_FEE] / blocks[:-1, BASE_FEE])) < 1e-6) > 0.99


def test_no_window_spans_a_hole_in_the_numbers(blocks: np.ndarray) -> None:
    holed = np.delete(blocks, 500, axis=0)  # block 18640500 missing
    s = block_samples(holed, 16, 5, "base_fee")
    lo, hi = s.number - 15, s.number + 5  # the window and the target's block
    assert not np.any((lo <= 18640500) & (hi >= 18640500))
    assert len(s) > 3000


@pytest.mark.parametrize("family", ["persistence", "eip1559", "linear", "lightgbm", "gru"])
def test_every_fee_family_exports_with_parity_and_loads_through_the_registry(blocks: np.ndarray, family: str,
                                                                              tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    entry = build_fee_model(blocks[:2000], family, "base_fee", 5, 16, registry, "fees.base_fee.h5", TINY)
    assert entry.card["kind"] == "fees" and entry.card["reference"] == "eip1559"
    assert entry.card["parity_max_abs_diff"] <= 1e-4
    model = Forecaster.load(entry.onnx_path, expected_sha256=entry.sha256, features=FEE_FEATURES)
    x = block_samples(blocks[2000:2100], 16, 5, "base_fee").x()
    y = model.predict(x)
    assert y.shape == (len(x), 4) and np.isfinite(y).all() and np.all(y[:, 1] <= y[:, 3])
    with pytest.raises(ModelRejected, match="features"):  # a fee model is never served as a market model
        Forecaster.load(entry.onnx_path)


def test_backtest_reports_every_family_beside_both_baselines_and_selects_on_validation(blocks) -> None:
    report = fee_backtest(blocks, horizon=5, window=16, options=TINY)
    out = report.to_json()
    assert out["reference"] == "eip1559" and out["selected_on"] == "validation" and out["target"] == "base_fee"
    assert [r["model"] for r in out["results"]] == ["persistence", "eip1559", "linear", "lightgbm", "gru"]
    by = {r["model"]: r for r in out["results"]}
    assert by["eip1559"]["skill_vs_reference"] == 0.0 and by["persistence"]["skill_vs_persistence"] == 0.0
    chosen = by[out["selected"]]
    assert chosen["model"] == "eip1559" or chosen["val_skill_vs_reference"] > 0
    assert max(r["val_skill_vs_reference"] for r in out["results"]) == chosen["val_skill_vs_reference"] or \
        chosen["model"] == "eip1559"
    # h = 1: the EIP-1559 rule is exact on real blocks; persistence is far behind
    h1 = {r["model"]: r for r in fee_backtest(blocks, 1, "base_fee", ("linear",), 16, options=TINY).results}
    assert h1["eip1559"]["mae"] < 0.01 * h1["persistence"]["mae"]
    gas = fee_backtest(blocks, 5, "gas_ratio", ("linear",), 16, options=TINY).to_json()
    assert gas["reference"] == "persistence" and [r["model"] for r in gas["results"]] == ["persistence", "linear"]


def test_cli_backtest_on_a_block_file_writes_the_schema_and_refuses_bad_files(tmp_path: Path) -> None:
    out = tmp_path / "bt.json"
    small = tmp_path / "blocks.csv.gz"
    with gzip.open(CSV, "rt") as src, gzip.open(small, "wt") as dst:
        dst.writelines(line for i, line in zip(range(1500), src))
    cmd = [sys.executable, "-m", "chaincast.deploy.cli", "backtest", "--data", str(small), "--target", "base_fee",
           "--horizon", "5", "--window", "8", "--models", "linear", "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    data = json.loads(out.read_text())
    assert {"horizon", "target", "rows", "results", "selected", "selected_on", "reference"} <= set(data)
    bad = subprocess.run([*cmd[:5], str(TEST_DATA / "chain" / "blocks.csv")], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "base_fee_per_gas" in flat(bad.stderr) and "Traceback" not in bad.stderr
    wrong = subprocess.run([*cmd[:5], str(small), "--target", "log_return"], capture_output=True, text=True,
                           timeout=300)
    assert wrong.returncode == 2 and "not a block target" in flat(wrong.stderr)


def flat(text: str) -> str:
    """The CLI's error box as one line of words (the box wraps long messages)."""
    return " ".join(text.replace("│", " ").split())

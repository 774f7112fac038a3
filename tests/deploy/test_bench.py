"""`chaincast bench` at a tiny size on the real embedded stack: every figure is there and sane.

No assertion on speed: this checks the machinery (pre-load, workers, metrics
polling, XREAD latency, model swap, bare-Faust counter, JSON), not the machine.
"""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from chaincast.deploy import bench
from chaincast.deploy.cli import app
from chaincast.deploy.up import bundled_files
from chaincast.stream.settings import Settings

KEYS = ("trades_per_s_per_worker", "messages_per_s", "bare_faust_msgs_per_s", "bar_to_redis_ms_p50",
        "bar_to_redis_ms_p99", "swap_s", "worker_rss_mb", "two_worker_scaling")


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.mark.timeout(120)
def test_tiny_bench_reports_every_figure(stack, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "CEILING_MESSAGES", 2000)
    settings = Settings(**stack, CHAINCAST_HOME=str(tmp_path / "home"))
    plan = bench.BenchPlan(bars_per_symbol=300, latency_s=3.0, families=("linear", "persistence"), ort_bars=1500,
                           trades_per_bar=20)
    files = bundled_files(["BTCUSDT", "ETHUSDT"])
    result = bench.run_bench(settings, plan, files, tmp_path / "logs", echo=lambda _line: None)

    for key in KEYS:
        assert positive(result[key]), (key, result[key])
    assert result["bar_to_redis_ms_p50"] <= result["bar_to_redis_ms_p99"]
    assert result["bar_to_redis_samples"] > 0
    assert set(result["ort_speedup_vs_torch"]) == {"linear", "persistence"}
    assert all(positive(v) for v in result["ort_speedup_vs_torch"].values())
    assert result["machine"]["cores"] >= 1 and result["machine"]["python"]
    assert result["settings"]["trades_per_message"] == bench.TRADES_PER_MESSAGE
    assert result["throughput_run"]["trades"] == 20 * 300 * 2
    json.dumps(result, allow_nan=False)  # what --json writes


def test_bad_arguments_are_one_line_errors(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["bench", "--data", str(tmp_path / "nope.csv.gz")])
    assert missing.exit_code != 0 and "no such file" in missing.output
    short = runner.invoke(app, ["bench", "--duration", "1"])
    assert short.exit_code != 0 and "--duration" in short.output
    nameless = tmp_path / "history.csv"
    nameless.write_text("timestamp,open,high,low,close,volume\n")
    unnamed = runner.invoke(app, ["bench", "--data", str(nameless)])
    assert unnamed.exit_code != 0 and "cannot tell the symbol" in unnamed.output

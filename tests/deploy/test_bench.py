"""`chaincast bench` at a tiny size on the real embedded stack: every figure is there and sane.

No assertion on speed: this checks the machinery (pre-load, workers, metrics
polling, CPU and RSS readings, XREAD latency, model swap, bare-Faust counter,
the symbol scan, the Quix Streams peer, JSON), not the machine.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from chaincast.deploy.bench.plan import (
    BenchPlan,
    closes,
    derive_markets,
    files_of,
    partition_of,
    scan_traffic,
    trade_messages,
)
from chaincast.deploy.bench.harness import settle
from chaincast.deploy.bench.run import run_bench
from chaincast.deploy.cli import app
from chaincast.deploy.up import bundled_files
from chaincast.models.history import TS, load_many
from chaincast.stream.records import TradeBatch
from chaincast.stream.settings import Settings

pytestmark = pytest.mark.one_broker  # the tiny bench checks the JSON's shape; `chaincast bench --kafka` measures Kafka

# Every key of the proof, and every key older runs reported (nothing removed).
KEYS = ("broker", "trades_per_s_per_worker", "messages_per_s", "bare_faust_msgs_per_s", "bar_to_redis_ms_p50",
        "bar_to_redis_ms_p99", "ort_speedup_vs_torch", "worker_cpu_efficiency_2v1", "worker_rss_mb",
        "symbols_scan", "peer", "ratio_vs_peer", "floor", "swap_s", "two_worker_scaling", "predict_stage_ms_p50")


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def bars() -> dict[str, np.ndarray]:
    return {s: load_many(p) for s, p in bundled_files(["BTCUSDT", "ETHUSDT"]).items()}


def test_markets_are_derived_from_the_files_and_spread_over_partitions(bars):
    markets = derive_markets(bars, 8, 500, "binance", 4, balanced=True)
    assert list(markets)[:2] == ["BTCUSDT", "ETHUSDT"]  # the real ones first
    assert sorted(partition_of("binance", m, 4) for m in markets) == [0, 0, 1, 1, 2, 2, 3, 3]
    derived = [m for m in markets if m not in bars]
    for m in derived:
        rows = markets[m]
        assert rows.shape == (500, bars["BTCUSDT"].shape[1])
        source = bars[m[:7]]
        np.testing.assert_array_equal(rows[:, TS], source[:500, TS])  # the same minutes ...
        assert not np.array_equal(rows[:, TS + 1:], source[:500, TS + 1:])  # ... other prices
    with pytest.raises(ValueError, match="evenly"):
        derive_markets(bars, 6, 500, "binance", 4, balanced=True)


def test_timed_closes_send_the_closing_trade_alone(bars):
    head = {s: b[:10] for s, b in bars.items()}
    sent = closes("binance", {s: b[10:] for s, b in bars.items()}, {s: int(b[9, TS]) for s, b in bars.items()},
                  5, 50)
    assert [c.symbol for c in sent] == ["BTCUSDT", "ETHUSDT", "BTCUSDT", "ETHUSDT", "BTCUSDT"]
    assert sent[0].bar_ts == int(head["BTCUSDT"][-1, TS]) and sent[2].bar_ts == int(bars["BTCUSDT"][10, TS])
    closer, rest = TradeBatch.loads(sent[0].closer), TradeBatch.loads(sent[0].rest)
    assert len(closer.trades) == 1 and len(rest.trades) == 49
    assert closer.trades[0].ts_event == int(bars["BTCUSDT"][10, TS])  # the first trade of the next minute
    assert rest.trades[0].trade_id == closer.trades[0].trade_id + 1


def test_scan_traffic_is_realistic_per_market(bars):
    traffic = scan_traffic("binance", bars, 16, 35, 4_000, 40, 4)
    assert len(traffic.markets) == 16 and len(traffic.warmup) == 16 * 36  # a message per market and minute, and the closer
    assert 5 * 60 <= min(traffic.per_bar.values()) and max(traffic.per_bar.values()) <= 40 * 60
    assert traffic.backlog_trades == sum(len(TradeBatch.loads(v).trades) for _, v in traffic.backlog)
    assert abs(traffic.backlog_trades - 4_000) <= 16
    assert {len(TradeBatch.loads(v).trades) for _, v in traffic.backlog} == {1}  # one trade per 20 ms frame
    warm: dict[bytes, list] = {}
    for key, value in traffic.warmup:
        warm.setdefault(key, []).append(TradeBatch.loads(value).trades)
    for key, messages in warm.items():
        assert [len(m) for m in messages] == [4] * 35 + [1]  # one warm-up minute per message, in order
        assert all(a[-1].ts_event < b[0].ts_event for a, b in zip(messages, messages[1:]))
        later = [TradeBatch.loads(v).trades[0] for k, v in traffic.backlog if k == key]
        assert later[0].trade_id - messages[-1][-1].trade_id == 1  # ids never jump from warm-up to backlog
    assert len(traffic.closes) == 40


@pytest.mark.slow
@pytest.mark.timeout(1500)  # every phase on real processes: minutes on a shared two-core machine
def test_tiny_bench_reports_every_figure(stack, tmp_path):
    settings = Settings(**stack, CHAINCAST_HOME=str(tmp_path / "home"))
    plan = BenchPlan(bars_per_market=300, latency_closes=120, closes_per_s=40.0, families=("linear", "persistence"),
                     ort_bars=1500, trades_per_bar=20, scan_sizes=(4, 8), scan_trades=2_000, scan_closes=120,
                     ceiling_messages=2_000)
    result = run_bench(settings, plan, bundled_files(["BTCUSDT", "ETHUSDT"]), tmp_path / "logs",
                       echo=lambda _line: None)

    for key in KEYS:
        assert key in result, key
    # The broker the run measured: the embedded Tansu, or the Apache Kafka the stack points at.
    assert result["broker"] == ("tansu (embedded)" if settings.embedded_broker
                                else f"kafka at {stack['KAFKA_BOOTSTRAP_SERVERS']}")
    for key in ("trades_per_s_per_worker", "messages_per_s", "bare_faust_msgs_per_s", "bar_to_redis_ms_p50",
                "bar_to_redis_ms_p99", "swap_s", "worker_rss_mb", "two_worker_scaling", "worker_cpu_efficiency_2v1",
                "one_worker_loaded_alongside_trades_per_s"):
        assert positive(result[key]), (key, result[key])
    assert result["bar_to_redis_ms_p50"] <= result["bar_to_redis_ms_p99"]
    assert 0 < result["bar_to_redis_samples"] <= 120
    # Where the worker's forecasts spent their time in that phase, from its own stage histogram.
    stages = result["forecast_stages_ms_mean"]
    assert set(stages) == {"queued", "fold", "inference", "redis"} and all(v > 0 for v in stages.values()), stages
    assert set(result["ort_speedup_vs_torch"]) == {"linear", "persistence"}
    assert all(positive(v) for v in result["ort_speedup_vs_torch"].values())
    assert result["throughput_run"]["trades"] == 20 * 300 * 4
    # Two workers split the four partitions (one market each) between them.
    split = result["two_worker_partitions"]
    assert sorted(p for w in split for p in w["partitions"]) == [0, 1, 2, 3]
    assert math.isclose(sum(w["trade_share"] for w in split), 1.0)
    assert [row["symbols"] for row in result["symbols_scan"]] == [4, 8]
    for row in result["symbols_scan"]:
        for key in ("trades_per_s", "p99_ms", "rss_mb", "rss_kb_per_market"):
            assert key in row and (key == "rss_kb_per_market" or positive(row[key])), (key, row)
        # Each timed part began on a quiet worker, and the run says how long it waited for that.
        assert set(row["settle_s"]) == {"after_warmup", "after_backlog"} and all(
            positive(v) for v in row["settle_s"].values()), row["settle_s"]
    assert positive(result["latency_settle_s"])
    assert result["peer"]["name"] == "quixstreams" and positive(result["peer"]["trades_per_s"])
    assert positive(result["peer"]["bar_to_redis_ms_p99"])
    assert positive(result["ratio_vs_peer"]["throughput"])
    # The floor: the same closes through each bare relay, found and appended to Redis.
    assert set(result["floor"]) == {"aiokafka", "faust"}
    for relay, floor in result["floor"].items():
        assert floor["bar_to_redis_samples"] > 0 and floor["bar_to_redis_missing"] == 0, (relay, floor)
        assert 0 < floor["bar_to_redis_ms_p50"] <= floor["bar_to_redis_ms_p99"], (relay, floor)
    assert result["machine"]["cores"] >= 1 and result["machine"]["python"]
    json.dumps(result, allow_nan=False)  # what --json writes


def test_settle_waits_for_a_busy_process_to_go_quiet(tmp_path):
    """A timed phase begins only once the work left over from the phase before is done: here a
    process that burns a fixed amount of CPU, then marks it done and sleeps."""
    done = tmp_path / "done"
    burner = subprocess.Popen([sys.executable, "-c", (
        "import time, pathlib\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 2.0: pass\n"
        f"pathlib.Path({str(done)!r}).write_text('1')\n"
        "time.sleep(3600)\n")])
    try:
        # No deadline of settle's own: should the process never look quiet, pytest's timeout ends the test.
        waited = settle([burner.pid], timeout=math.inf)
        assert done.exists(), f"settle returned after {waited:.1f}s while the process still worked"
        assert burner.poll() is None  # it returned while the process slept: because it went quiet
    finally:
        burner.kill()
        burner.wait()


def test_settle_waits_until_nothing_is_left_to_do():
    """Quiet is not enough: a worker's scorer works through its lag in paced batches, at a share of
    a core that passes for quiet. Here the process is idle and what is left goes 5, 2, 0."""
    left = iter([5.0, 2.0, 0.0])
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        settle([sleeper.pid], timeout=60.0, behind=lambda: next(left))
        assert next(left, None) is None, "settle returned before what was left reached 0"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_bad_arguments_are_one_line_errors(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["bench", "--data", str(tmp_path / "nope.csv.gz")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    short = runner.invoke(app, ["bench", "--duration", "1"])
    assert short.exit_code == 2 and "--duration" in short.output
    scan = runner.invoke(app, ["bench", "--scan", "64,4"])
    assert scan.exit_code == 2 and "--scan" in scan.output
    nameless = tmp_path / "history.csv"
    nameless.write_text("timestamp,open,high,low,close,volume\n")
    unnamed = runner.invoke(app, ["bench", "--data", str(nameless)])
    assert unnamed.exit_code == 2 and "cannot tell the symbol" in unnamed.output
    with pytest.raises(ValueError, match="cannot tell"):
        files_of([nameless])


def test_messages_interleave_markets_in_event_time(bars):
    msgs = trade_messages("binance", {s: b[:3] for s, b in bars.items()}, 10, 20)
    firsts = [TradeBatch.loads(v).trades[0].ts_event for _, v in msgs]
    assert firsts == sorted(firsts) and len(msgs) == 2 * 3 * 2


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_soak_reports_the_rate_of_its_first_and_last_window(stack, tmp_path):
    """The soak mode's JSON on a short run (a 60 s soak in 20 s windows): its shape, not its speed."""
    from chaincast.deploy.bench.soak import run_soak

    settings = Settings(**stack, CHAINCAST_HOME=str(tmp_path / "home"))
    result = run_soak(settings, 60, bundled_files(["BTCUSDT", "ETHUSDT"]), tmp_path / "logs", echo=lambda _line: None,
                      window_s=20, sample_s=2)
    assert result["mode"] == "soak" and result["window_s"] == 20 and result["goal_ratio"] == 0.8
    for key in ("predictions_per_s_first_window", "predictions_per_s_last_window", "ratio_last_first"):
        assert positive(result[key]), (key, result[key])
    assert result["passed"] == (result["ratio_last_first"] >= 0.8)
    assert len(result["predictions_per_s_by_window"]) >= 2
    assert result["messages_sent"] >= result["messages_read"] > 0
    assert all(b[1] >= a[1] for a, b in zip(result["samples"], result["samples"][1:]))  # a counter
    json.dumps(result, allow_nan=False)

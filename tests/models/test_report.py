"""``backtest --report DIR``: the HTML page renders its charts in a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from chaincast.models.backtest import backtest
from chaincast.models.report import write_report
from chaincast.models.train import FitOptions
from tests.models.model_fixtures import btc_2023, eth_2023  # noqa: F401 (pytest fixtures)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
QUICK = FitOptions(max_epochs=1, patience=1, max_steps_per_epoch=4, overrides={"lightgbm": {"n_estimators": 10}})


def render(page: Path, profile: Path) -> str:
    """The DOM after load, as headless Chromium sees it (scripts run, layout done)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
           "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_report_renders_in_chromium(btc_2023: np.ndarray, eth_2023: np.ndarray, tmp_path: Path) -> None:
    report = backtest([btc_2023[:4000], eth_2023[:4000]], horizon=5, models=("linear",), window=16,
                      target="volatility", folds=2, options=QUICK)
    page = write_report(report, tmp_path / "report")
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained: nothing fetched
    assert (tmp_path / "report" / "backtest.json").exists()
    dom = render(page, tmp_path / "profile")
    drawn = re.search(r'data-charts="(\d+)"', dom)
    assert drawn is not None, dom[:500]
    assert int(drawn.group(1)) == 4  # band over time, coverage per fold, calibration, skill per fold
    assert "selected on validation" in dom.lower().replace("selected on validation data only", "selected on validation")

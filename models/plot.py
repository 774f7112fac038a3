"""Optional plot of the last test window: realised price vs the forecast band.

matplotlib is not a chaincast dependency; without it ``plot_last_window``
raises ``PlotUnavailable`` and the CLI says so instead of failing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chaincast.models.backtest import BacktestReport
from chaincast.models.timeunits import MINUTE_MS

LAST_ROWS = 240  # four hours of 1-minute forecasts stay readable


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def plot_last_window(report: BacktestReport, path: str | Path, model: str | None = None) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never open a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib (pip install matplotlib); skipped the plot") from None
    test = report.last_test
    if test is None or not len(test):
        raise ValueError("the backtest has no test rows to plot")
    model = model or report.selected
    pred = report.last_pred[model][-LAST_ROWS:]
    y, close, ts = test.y[-LAST_ROWS:], test.close[-LAST_ROWS:], test.ts[-LAST_ROWS:]
    minutes = (ts - ts[0]) / MINUTE_MS + report.horizon  # x axis: when the forecast comes due
    fig, ax = plt.subplots(figsize=(11, 4.5))
    if report.target == "log_return":
        ax.plot(minutes, close * np.exp(y), color="black", lw=1, label="realised close")
        ax.plot(minutes, close * np.exp(pred[:, 0]), color="tab:blue", lw=1, label=f"{model} forecast")
        ax.fill_between(minutes, close * np.exp(pred[:, 1]), close * np.exp(pred[:, 3]), alpha=0.25, label="q10-q90")
        ax.set_ylabel("price")
    else:
        ax.plot(minutes, y, color="black", lw=1, label="realised volatility")
        ax.plot(minutes, pred[:, 0], color="tab:blue", lw=1, label=f"{model} forecast")
        ax.fill_between(minutes, pred[:, 1], pred[:, 3], alpha=0.25, label="q10-q90")
        ax.set_ylabel("volatility")
    ax.set_xlabel(f"minutes into the last test window (horizon {report.horizon})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

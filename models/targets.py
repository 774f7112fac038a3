"""What the models forecast, computed from bars at row i using only the future bars i+1..i+h.

- ``log_return``: log(close[i+h] / close[i]).
- ``volatility``: realised volatility of the next h one-bar returns,
  sqrt(mean(ret[i+1..i+h]^2)).

A target is NaN when those h bars are not contiguous minutes (a gap), so no
training row ever learns across missing data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chaincast.models.history import CLOSE, TS
from chaincast.models.timeunits import MINUTE_MS

TARGETS: tuple[str, ...] = ("log_return", "volatility")
TX_TARGET = "tx_value"  # the transaction-value target (models.tx_backtest): transactions, not bars


def make_target(bars: np.ndarray, horizon: int, target: str = "log_return") -> np.ndarray:
    """Target (N,) float64 at each row; NaN where the next ``horizon`` bars are missing.

    >>> b = np.zeros((4, 8)); b[:, TS] = [0, 60_000, 120_000, 240_000]
    >>> b[:, CLOSE] = [100.0, 110.0, 99.0, 100.0]
    >>> make_target(b, 1).round(4).tolist()  # the last step spans a gap
    [0.0953, -0.1054, nan, nan]
    >>> make_target(b, 2, "volatility").round(4).tolist()
    [0.1005, nan, nan, nan]
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    n = len(bars)
    out = np.full(n, np.nan)
    if n <= horizon:
        return out
    ts, log_close = bars[:, TS], np.log(bars[:, CLOSE])
    ok = ts[horizon:] - ts[:-horizon] == horizon * MINUTE_MS  # sorted unique ts: no gap inside
    if target == "log_return":
        value = log_close[horizon:] - log_close[:-horizon]
    else:
        ret2 = np.diff(log_close) ** 2  # ret2[j] is the squared return from bar j to j+1
        value = np.sqrt(np.lib.stride_tricks.sliding_window_view(ret2, horizon).mean(axis=1))
    out[: n - horizon] = np.where(ok, value, np.nan)
    return out


@dataclass(frozen=True)
class ForecastSpec:
    """One served forecaster: what it forecasts and how far ahead.

    The first spec of ``CHAINCAST_FORECASTS`` is the default forecaster: its
    model is named after the configured model name and its Redis keys are the
    historical ``cc:pred:{SYMBOL}``; every other spec gets a name and keys of its own.
    """

    target: str = "log_return"
    horizon: int = 1

    @property
    def label(self) -> str:
        """``volatility:5``: how the setting spells it.

        >>> ForecastSpec("volatility", 5).label
        'volatility:5'
        """
        return f"{self.target}:{self.horizon}"

    def model_name(self, base: str, default: bool) -> str:
        """The registry / ``models.updates`` name of this forecaster's model.

        >>> ForecastSpec().model_name("forecaster", True), ForecastSpec("volatility", 5).model_name("forecaster", False)
        ('forecaster', 'forecaster-volatility-5')
        """
        return base if default else f"{base}-{self.target}-{self.horizon}"


def parse_forecasts(text: str) -> tuple[ForecastSpec, ...]:
    """``log_return:1,volatility:5`` -> specs; a bad entry raises ValueError with one line.

    >>> [s.label for s in parse_forecasts("log_return:1, volatility:5")]
    ['log_return:1', 'volatility:5']
    >>> parse_forecasts("price:1")
    Traceback (most recent call last):
    ...
    ValueError: unknown target 'price' in 'price:1'; choose from log_return, volatility
    """
    specs: list[ForecastSpec] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        target, _, horizon = item.partition(":")
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r} in {item!r}; choose from {', '.join(TARGETS)}")
        try:
            h = int(horizon or "1")
        except ValueError:
            raise ValueError(f"horizon of {item!r} is not an integer") from None
        if not 1 <= h <= 1440:
            raise ValueError(f"horizon of {item!r} must be 1..1440 bars")
        spec = ForecastSpec(target, h)
        if spec in specs:
            raise ValueError(f"{item!r} is given twice")
        specs.append(spec)
    if not specs:
        raise ValueError("give at least one forecast, e.g. log_return:1")
    return tuple(specs)

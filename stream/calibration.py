"""Live adaptive conformal calibration of one market's forecast bands, per forecaster.

The markets agent (``stream.agents.markets``) forecasts a closed bar with every
served model; before a band is written, ``LiveBand.calibrate`` first realises
the raw forecasts whose target bar has now closed (from the market's closes,
``stream.scoring.realise``: the same target definition as training), folds each
into the ``models.conformal.AdaptiveConformal`` scale (the procedure the backtest
runs), then stretches the new raw q10..q90 by that scale and keeps the raw band as
pending. So the band of bar ``t`` depends only on outcomes known at ``t`` and on
the state saved after the previous batch: a redelivered bar is calibrated the same
way whatever the batch boundaries, and the state (a field of ``stream.market.MarketState``)
is saved only once the batch's outputs are acknowledged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chaincast.models.conformal import AdaptiveConformal
from chaincast.models.timeunits import MINUTE_MS
from chaincast.stream.scoring import realise

KEEP_PENDING = 64  # raw forecasts awaiting their outcome per forecaster (the horizon plus room for gaps)


@dataclass
class LiveBand:
    """The band scale of one market and forecaster and its unrealised raw forecasts.

    >>> band = LiveBand("log_return", 1, gamma=0.5)
    >>> closes = {0: 100.0, 60_000: 120.0, 120_000: 120.0}
    >>> band.calibrate(0, closes, -0.01, 0.0, 0.01)  # nothing realised yet: the raw band
    (-0.01, 0.01)
    >>> round(band.calibrate(60_000, closes, -0.01, 0.0, 0.01)[1], 4)  # bar 0's +18 % was a miss: wider
    0.0149
    >>> round(band.calibrate(120_000, closes, -0.01, 0.0, 0.01)[1], 4)  # bar 60s's 0 % a hit: narrower
    0.0135
    >>> [p[0] for p in band.pending]
    [120000]
    """

    target: str
    horizon: int
    log_scale: float = 0.0
    pending: list[list[float]] = field(default_factory=list)  # [bar_ts, q10, q50, q90], raw, oldest first
    gamma: float | None = None  # None: models.conformal's default step

    @property
    def scale(self) -> float:
        """How much the raw band is stretched now (1 = as the model made it)."""
        return math.exp(self.log_scale)

    def _conformal(self) -> AdaptiveConformal:
        c = AdaptiveConformal(log_scale=self.log_scale)
        if self.gamma is not None:
            c.gamma = self.gamma
        return c

    def calibrate(self, bar_ts: int, closes: Mapping[int, float], q10: float, q50: float,
                  q90: float) -> tuple[float, float]:
        """Realise what bar ``bar_ts`` reveals, then the calibrated (q10, q90) of its raw forecast."""
        self.realise(bar_ts, closes)
        lo, hi = self._conformal().band(q50, q10, q90)
        if self.target == "volatility":
            lo = max(lo, 0.0)  # a realised volatility is never negative: a band below zero covers nothing more
        # A redelivered bar replaces its own entry: it is forecast again, never twice pending.
        self.pending = [p for p in self.pending if p[0] != bar_ts] + [[bar_ts, q10, q50, q90]]
        del self.pending[:-(self.horizon + KEEP_PENDING)]  # h forecasts wait at any time, more across a gap
        return lo, hi

    def realise(self, now_ts: int, closes: Mapping[int, float]) -> None:
        """Fold every pending forecast whose target bar is at or before ``now_ts`` (oldest first)."""
        due = [p for p in self.pending if p[0] + self.horizon * MINUTE_MS <= now_ts]
        if not due:
            return
        self.pending = [p for p in self.pending if p[0] + self.horizon * MINUTE_MS > now_ts]
        conformal = self._conformal()
        for bar_ts, q10, q50, q90 in due:
            y = realise(self.target, self.horizon, closes, int(bar_ts))
            if y is None:  # a gap in the closes: no outcome, no update
                continue
            conformal.update(y, q10, q50, q90)
        self.log_scale = conformal.log_scale

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "horizon": self.horizon, "log_scale": self.log_scale,
                "pending": list(self.pending)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LiveBand:
        return cls(str(d["target"]), int(d["horizon"]), float(d.get("log_scale", 0.0)),
                   [list(p) for p in d.get("pending", [])])

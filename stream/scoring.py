"""Live scoring state of one market: predictions joined with the bar they forecast.

The score agent (``stream.agents.score``) is the loop around ``MarketScore``;
this module runs without a broker. A prediction for bar ``t`` with horizon
``h`` is realised by the close of bar ``t + h`` minutes: the realised target is
``log(close / price)``, persistence's forecast is zero, so its absolute error
is ``|target|``. Bars and predictions come from two topics, so either may
arrive first: recent closes and unrealised predictions are both kept (bounded).
State is a plain JSON dict, the value of a Faust table keyed by market.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from chaincast.models.timeunits import MINUTE_MS
from chaincast.stream.records import Bar, Prediction

KEEP_CLOSES = 128  # bars of closes kept for predictions that arrive after their target bar
KEEP_PENDING = 512  # unrealised predictions kept (the horizon times the lag between topics, with room)
KEEP_SCORED = 512  # bar times already scored: a redelivered prediction is not scored twice
KEEP_VERSIONS = 3  # model versions with a live score per market (bounds the metric labels)


@dataclass(frozen=True)
class Stats:
    version: str
    n: int
    mae: float
    mae_persistence: float
    skill: float  # 1 - MAE / MAE_persistence over the window
    coverage_80: float  # share of realised targets inside q10..q90

    def fields(self) -> dict[str, str]:
        return {"version": self.version, "n": str(self.n), "mae": repr(self.mae),
                "mae_persistence": repr(self.mae_persistence), "skill": repr(self.skill),
                "coverage_80": repr(self.coverage_80)}


@dataclass(frozen=True)
class Update:
    """What one event changed: fresh stats per version, versions dropped, a retrain request."""

    stats: list[Stats]
    dropped: list[str]
    retrain: str | None = None  # the reason, when live skill stayed below zero for a full window


class MarketScore:
    """Rolling live scores of one market per model version.

    >>> ms = MarketScore({}, window=2)
    >>> bar = lambda ts, c: Bar(exchange="x", symbol="X", ts=ts, open=c, high=c, low=c, close=c, volume=1,
    ...                         trades=1, vwap=c)
    >>> pred = lambda ts, y: Prediction(exchange="x", symbol="X", bar_ts=ts, horizon=1, y_hat=y, q10=-1, q50=0,
    ...     q90=1, price=100, price_hat=100 * math.exp(y), model_name="m", model_version="v1", created_at=0,
    ...     latency_ms=0)
    >>> ms.on_prediction(pred(0, 0.01)).stats, ms.on_bar(bar(60_000, 100.0)).stats[0].skill
    ([], -inf)
    >>> u = ms.on_bar(bar(120_000, 101.0)); ms.on_prediction(pred(60_000, 0.05)).retrain
    'v1 live skill -4.03 over 2 predictions'
    """

    def __init__(self, state: dict[str, Any] | None, window: int) -> None:
        self.state = state or {}
        self.window = window
        self.closes: dict[str, float] = self.state.setdefault("closes", {})  # str(ts) -> close (JSON keys)
        self.pending: list[list[Any]] = self.state.setdefault("pending", [])  # [bar_ts, h, y, q10, q90, price, v]
        self.scored: list[int] = self.state.setdefault("scored", [])
        self.scores: dict[str, list[list[float]]] = self.state.setdefault("scores", {})  # v -> [[err, err_p, in]]

    def on_bar(self, bar: Bar) -> Update:
        self.closes[str(bar.ts)] = bar.close
        if len(self.closes) > KEEP_CLOSES:
            for ts in sorted(self.closes, key=int)[: len(self.closes) - KEEP_CLOSES]:
                del self.closes[ts]
        due = [p for p in self.pending if p[0] + p[1] * MINUTE_MS == bar.ts]
        self.pending[:] = [p for p in self.pending if p[0] + p[1] * MINUTE_MS != bar.ts]
        return self._realise(due, bar.close)

    def on_prediction(self, p: Prediction) -> Update:
        if p.bar_ts in self.scored or any(q[0] == p.bar_ts for q in self.pending):
            return Update([], [])  # a redelivery
        row = [p.bar_ts, p.horizon, p.y_hat, p.q10, p.q90, p.price, p.model_version]
        close = self.closes.get(str(p.target_ts))
        if close is not None:
            return self._realise([row], close)
        self.pending.append(row)
        del self.pending[:-KEEP_PENDING]
        return Update([], [])

    def _realise(self, rows: list[list[Any]], close: float) -> Update:
        touched: list[str] = []
        for bar_ts, _h, y_hat, q10, q90, price, version in rows:
            y = math.log(close / price)
            window = self.scores.setdefault(version, [])
            window.append([abs(y - y_hat), abs(y), float(q10 <= y <= q90)])
            del window[: -self.window]
            self.scored.append(bar_ts)
            if version not in touched:
                touched.append(version)
        del self.scored[:-KEEP_SCORED]
        dropped = []
        while len(self.scores) > KEEP_VERSIONS:  # dicts keep insertion order: the oldest version goes
            oldest = next(iter(self.scores))
            dropped.append(oldest)
            del self.scores[oldest]
        stats = [self.stats(v) for v in touched if v in self.scores]
        return Update(stats, dropped, self._retrain(stats))

    def stats(self, version: str) -> Stats:
        rows = self.scores[version]
        n = len(rows)
        mae, mae_p = sum(r[0] for r in rows) / n, sum(r[1] for r in rows) / n
        skill = (1.0 - mae / mae_p) if mae_p > 0 else (0.0 if mae == 0 else -math.inf)
        return Stats(version, n, mae, mae_p, skill, sum(r[2] for r in rows) / n)

    def _retrain(self, stats: list[Stats]) -> str | None:
        for s in stats:
            if s.n >= self.window and s.skill < 0 and self.state.get("asked") != s.version:
                self.state["asked"] = s.version  # once per version: the retrainer decides what happens next
                return f"{s.version} live skill {s.skill:.2f} over {s.n} predictions"
        return None

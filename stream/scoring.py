"""Live scoring state of one market: predictions joined with the bars that realise them.

The score agent (``stream.agents.score``) is the loop around ``MarketScore``;
this module runs without a broker. A prediction for bar ``t`` with horizon
``h`` is realised once the closes of bars ``t .. t + h`` are known, as its own
target (``realise``: ``models.targets.make_target`` over those closes, the
definition training uses): the log return ``log(close[t+h] / close[t])``, or the
realised volatility ``sqrt(mean of the h squared one-bar log returns)``. Each is
compared with persistence's forecast for the same target (``reference``): a zero
return; for volatility the realised volatility of the h bars before ``t`` (what
``models.baselines`` calls persistence; HAR-RV is the offline reference, which
needs a fit the stream does not have). Scores are kept per forecaster
(``target:h{h}``, ``stream.forecasts.forecaster_id``) and model version.

Bars and predictions come from two topics, so either may arrive first: recent
closes and unrealised predictions are both kept (bounded). State is a plain JSON
dict, the value of a Faust table keyed by market.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from chaincast.models.history import BAR_COLUMNS, CLOSE, TS
from chaincast.models.targets import make_target
from chaincast.models.timeunits import MINUTE_MS
from chaincast.stream.records import Bar, Prediction, forecaster_key

KEEP_CLOSES = 128  # bars of closes kept beyond the longest horizon's need (predictions arriving late)
KEEP_PENDING = 512  # unrealised predictions kept (forecasters x the horizon x the lag between topics, with room)
KEEP_SCORED = 1024  # (forecaster, bar) already scored: a redelivered prediction is not scored twice
KEEP_VERSIONS = 3  # model versions with a live score per market and forecaster (bounds the metric labels)
FORMAT = 2  # of the state dict: 1 scored log returns only, per version (dropped on load: scores start over)


def realise(target: str, horizon: int, closes: Mapping[int, float] | Mapping[str, float], bar_ts: int,
            ) -> float | None:
    """The realised ``target`` of a forecast made at bar ``bar_ts``; None until (or unless) the closes
    of bars ``bar_ts .. bar_ts + horizon`` are all known. Keys: bar open time (int or str) -> close.

    >>> closes = {0: 100.0, 60_000: 110.0, 120_000: 99.0}
    >>> round(realise("log_return", 2, closes, 0), 4), round(realise("volatility", 2, closes, 0), 4)
    (-0.0101, 0.1005)
    >>> realise("volatility", 2, closes, 60_000) is None
    True
    """
    out = np.zeros((horizon + 1, len(BAR_COLUMNS)))
    for i in range(horizon + 1):
        ts = bar_ts + i * MINUTE_MS
        close = closes.get(ts, closes.get(str(ts)))  # type: ignore[call-overload]  # JSON state has str keys
        if close is None:
            return None
        out[i, TS], out[i, CLOSE] = ts, close
    value = float(make_target(out, horizon, target)[0])
    return None if math.isnan(value) else value


def reference(target: str, horizon: int, closes: Mapping[int, float] | Mapping[str, float], bar_ts: int,
              ) -> float | None:
    """Persistence's forecast of ``target`` made at bar ``bar_ts``: no change for a return, the realised
    volatility of the last ``horizon`` bars for volatility (None while those closes are unknown).

    >>> reference("log_return", 1, {}, 0), round(reference("volatility", 1, {0: 100.0, 60_000: 101.0}, 60_000), 5)
    (0.0, 0.00995)
    """
    if target == "log_return":
        return 0.0
    return realise(target, horizon, closes, bar_ts - horizon * MINUTE_MS)


@dataclass(frozen=True)
class Stats:
    forecaster: str
    version: str
    model_name: str
    n: int
    mae: float
    mae_persistence: float
    skill: float  # 1 - MAE / MAE_persistence over the window
    coverage_80: float  # share of realised targets inside q10..q90 (the served, calibrated band)

    def fields(self) -> dict[str, str]:
        return {"forecaster": self.forecaster, "version": self.version, "model_name": self.model_name,
                "n": str(self.n), "mae": repr(self.mae), "mae_persistence": repr(self.mae_persistence),
                "skill": repr(self.skill), "coverage_80": repr(self.coverage_80)}


@dataclass(frozen=True)
class Update:
    """What one event changed: fresh stats, (forecaster, version)s dropped, retrain requests by model name."""

    stats: list[Stats]
    dropped: list[tuple[str, str]]
    retrain: dict[str, str] | None = None  # forecaster -> the reason (live skill below zero for a full window)

    def merge(self, other: Update) -> Update:
        return Update(self.stats + other.stats, self.dropped + other.dropped,
                      {**(self.retrain or {}), **(other.retrain or {})} or None)


class MarketScore:
    """Rolling live scores of one market per forecaster and model version.

    >>> ms = MarketScore({}, window=2)
    >>> bar = lambda ts, c: Bar(exchange="x", symbol="X", ts=ts, open=c, high=c, low=c, close=c, volume=1,
    ...                         trades=1, vwap=c)
    >>> pred = lambda ts, y: Prediction(exchange="x", symbol="X", bar_ts=ts, horizon=1, y_hat=y, q10=-1, q50=0,
    ...     q90=1, price=100, price_hat=100 * math.exp(y), model_name="m", model_version="v1", created_at=0,
    ...     latency_ms=0)
    >>> ms.on_prediction(pred(0, 0.01)).stats, ms.on_bar(bar(60_000, 100.0)).stats[0].skill
    ([], -inf)
    >>> u = ms.on_bar(bar(120_000, 101.0)); ms.on_prediction(pred(60_000, 0.05)).retrain
    {'log_return:h1': 'log_return:h1 v1 live skill -4.03 over 2 predictions'}
    """

    def __init__(self, state: dict[str, Any] | None, window: int, max_horizon: int = 1) -> None:
        if not state or state.get("format") != FORMAT:
            state = {"format": FORMAT}
        self.state = state
        self.window = window
        self.keep_closes = 2 * max_horizon + KEEP_CLOSES  # volatility's reference looks h bars back
        self.closes: dict[str, float] = self.state.setdefault("closes", {})  # str(ts) -> close (JSON keys)
        # [bar_ts, target, h, y_hat, q10, q90, version, model_name]
        self.pending: list[list[Any]] = self.state.setdefault("pending", [])
        self.scored: list[str] = self.state.setdefault("scored", [])  # "forecaster@bar_ts"
        # "forecaster|version" -> [[err, err_persistence, inside], ...]
        self.scores: dict[str, list[list[float]]] = self.state.setdefault("scores", {})
        self.names: dict[str, str] = self.state.setdefault("names", {})  # "forecaster|version" -> model name
        self.asked: list[str] = self.state.setdefault("asked", [])  # "forecaster|version" asked to retrain

    def on_bar(self, bar: Bar) -> Update:
        self.closes[str(bar.ts)] = bar.close
        if len(self.closes) > self.keep_closes:
            for ts in sorted(self.closes, key=int)[: len(self.closes) - self.keep_closes]:
                del self.closes[ts]
        ready, waiting = [], []
        for row in self.pending:  # realised once its last bar is known (a gap realises nothing: it ages out)
            (ready if row[0] + row[2] * MINUTE_MS <= bar.ts else waiting).append(row)
        self.pending[:] = waiting
        return self._realise(ready)

    def on_prediction(self, p: Prediction) -> Update:
        fid = forecaster_key(p.target, p.horizon)
        if f"{fid}@{p.bar_ts}" in self.scored or any(
                (q[0], q[1], q[2]) == (p.bar_ts, p.target, p.horizon) for q in self.pending):
            return Update([], [])  # a redelivery
        row = [p.bar_ts, p.target, p.horizon, p.y_hat, p.q10, p.q90, p.model_version, p.model_name]
        self.closes.setdefault(str(p.bar_ts), p.price)  # the close the forecast started from, bar t's own
        if str(p.target_ts) in self.closes:
            return self._realise([row])
        self.pending.append(row)
        del self.pending[:-KEEP_PENDING]
        return Update([], [])

    def _realise(self, rows: list[list[Any]]) -> Update:
        touched: list[str] = []
        for bar_ts, target, h, y_hat, q10, q90, version, model_name in rows:
            y = realise(target, h, self.closes, bar_ts)
            ref = reference(target, h, self.closes, bar_ts)
            if y is None or ref is None:  # a gap (or a start without the reference's bars): not scored
                continue
            fid = forecaster_key(target, h)
            key = f"{fid}|{version}"
            window = self.scores.setdefault(key, [])
            window.append([abs(y - y_hat), abs(y - ref), float(q10 <= y <= q90)])
            del window[: -self.window]
            self.names[key] = model_name
            self.scored.append(f"{fid}@{bar_ts}")
            if key not in touched:
                touched.append(key)
        del self.scored[:-KEEP_SCORED]
        dropped = self._bound()
        stats = [self.stats(*k.split("|", 1)) for k in touched if k in self.scores]
        return Update(stats, dropped, self._retrain(stats))

    def _bound(self) -> list[tuple[str, str]]:
        """Keep the newest KEEP_VERSIONS versions of each forecaster (dicts keep insertion order)."""
        dropped = []
        by_forecaster: dict[str, list[str]] = {}
        for key in self.scores:
            by_forecaster.setdefault(key.split("|", 1)[0], []).append(key)
        for keys in by_forecaster.values():
            for key in keys[: max(len(keys) - KEEP_VERSIONS, 0)]:
                del self.scores[key]
                self.names.pop(key, None)
                fid, version = key.split("|", 1)
                dropped.append((fid, version))
        return dropped

    def forecasters(self) -> list[str]:
        """The forecasters with a live score, in first-scored order."""
        return list(dict.fromkeys(k.split("|", 1)[0] for k in self.scores))

    def versions(self, forecaster: str) -> list[str]:
        return [k.split("|", 1)[1] for k in self.scores if k.split("|", 1)[0] == forecaster]

    def stats(self, forecaster: str, version: str) -> Stats:
        key = f"{forecaster}|{version}"
        rows = self.scores[key]
        n = len(rows)
        mae, mae_p = sum(r[0] for r in rows) / n, sum(r[1] for r in rows) / n
        skill = (1.0 - mae / mae_p) if mae_p > 0 else (0.0 if mae == 0 else -math.inf)
        return Stats(forecaster, version, self.names.get(key, ""), n, mae, mae_p, skill, sum(r[2] for r in rows) / n)

    def _retrain(self, stats: list[Stats]) -> dict[str, str] | None:
        out = {}
        for s in stats:
            key = f"{s.forecaster}|{s.version}"
            if s.n >= self.window and s.skill < 0 and key not in self.asked:
                self.asked.append(key)  # once per version: the retrainer decides what happens next
                del self.asked[:-KEEP_VERSIONS * 8]
                out[s.forecaster] = f"{s.forecaster} {s.version} live skill {s.skill:.2f} over {s.n} predictions"
        return out or None

"""One retraining round, as a pure job: train a challenger, score it beside the champion and
persistence on the newest bars, decide, and export what wins.

``run_challenge`` runs in a worker process (see ``consumers.retrainer``): it
takes plain arrays and paths and returns bytes and dicts, so nothing here
touches the broker, Redis or the registry. The registry write and the
announcement happen in the retrainer after the job returns, so a killed job
leaves nothing behind.

The validation slice is the last ``val_bars`` bars of every symbol: the
challenger trains only on bars before it (its own early stopping uses an
earlier split), the champion is scored through its ONNX file exactly as the
stream serves it, and the reference is persistence (the zero-change forecast)
for returns and HAR-RV (fitted on the same training bars) for volatility.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from chaincast.consumers.compare import Decision, SliceScore, decide, score
from chaincast.models.backtest import REFERENCE
from chaincast.models.build import export_checked
from chaincast.models.dataset import Samples, samples
from chaincast.models.evaluate import predict
from chaincast.models.export import ExportError
from chaincast.models.families import make_net
from chaincast.models.history import TS
from chaincast.models.serving import Forecaster, ModelRejected
from chaincast.models.train import FitOptions, TrainResult, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChallengeJob:
    bars: dict[str, np.ndarray]  # symbol -> models.history layout, oldest first
    name: str
    family: str
    window: int
    horizon: int
    val_bars: int
    max_epochs: int
    margin: float
    alpha: float
    champion_path: str | None = None
    champion_sha256: str | None = None
    fallback: bool = False  # live scoring lost to persistence: serve persistence if nothing better wins
    target: str = "log_return"
    seed: int = 0
    trigger: str = "schedule"
    parent: str | None = None  # the champion's version: the lineage a promoted card records
    round_index: int = 1  # rounds against this champion so far, this one included (alpha spending)


@dataclass
class ChallengeResult:
    decision: Decision
    scores: dict[str, SliceScore] = field(default_factory=dict)  # role -> score on the slice
    kind: str = ""  # "challenger" or "fallback" when onnx holds a model to promote
    onnx: bytes | None = None
    card: dict[str, Any] | None = None
    seconds: float = 0.0


def split_at(bars: dict[str, np.ndarray], val_bars: int) -> tuple[list[np.ndarray], dict[str, float]]:
    """Training bars (everything before each symbol's last ``val_bars``) and each slice's first ts."""
    train_part, cut_ts = [], {}
    for sym, b in bars.items():
        if len(b) <= val_bars:
            continue
        train_part.append(b[:-val_bars])
        cut_ts[sym] = float(b[-val_bars, TS])
    return train_part, cut_ts


def validation_slice(bars: dict[str, np.ndarray], cut_ts: dict[str, float], window: int, horizon: int,
                     target: str) -> Samples | None:
    """Every valid window ending inside each symbol's slice (its look-back may reach before it)."""
    parts = []
    for sym, start in cut_ts.items():
        s = samples(bars[sym], window, horizon, target)
        keep = np.flatnonzero(s.ts >= start)
        if len(keep):
            parts.append(s.take(int(keep[0]), len(s)))
    return Samples.concat(parts) if parts else None


def champion_predictions(job: ChallengeJob, val: Samples) -> np.ndarray | None:
    """The served champion's forecasts on the slice, via onnxruntime; None when there is none to judge."""
    if job.champion_path is None:
        return None
    try:
        model = Forecaster.load(job.champion_path, expected_sha256=job.champion_sha256)
    except ModelRejected as exc:
        log.error("the champion cannot be loaded, judging against persistence only: %s", exc)
        return None
    if model.window != job.window or model.horizon != job.horizon:
        # The stream serves only the configured window; a champion of another shape is not comparable.
        log.warning("champion %s has window/horizon %d/%d, not %d/%d: judged against persistence only",
                    model.version, model.window, model.horizon, job.window, job.horizon)
        return None
    return model.predict(val.x).astype(np.float64)


def _card(result: TrainResult, job: ChallengeJob, slice_scores: dict[str, SliceScore], val: Samples,
          decision: Decision) -> dict[str, Any]:
    card = dict(result.card)
    own = slice_scores.get("challenger" if card["family"] == job.family else REFERENCE[job.target])
    if own is not None:
        card["metrics"] = {**card["metrics"], "holdout": {
            "mae": own.mae, "skill_vs_persistence": own.skill, "coverage_80": own.coverage_80, "rows": own.rows}}
    card["parent"] = job.parent
    card["trigger"] = job.trigger
    card["validation_slice"] = {
        "first_ts": int(val.ts.min()), "last_ts": int(val.ts.max()), "rows": len(val),
        "p_value": decision.p_value, **{role: s.as_dict() for role, s in slice_scores.items()},
    }
    return card


def run_challenge(job: ChallengeJob) -> ChallengeResult:
    """Train, score, decide, export (in a worker process). Never raises for bad data: it refuses."""
    started = time.monotonic()
    torch.set_num_threads(1)  # a retrainer must not starve the stream workers it shares a host with
    train_bars, cut_ts = split_at(job.bars, job.val_bars)
    val = validation_slice(job.bars, cut_ts, job.window, job.horizon, job.target) if train_bars else None
    options = FitOptions(max_epochs=job.max_epochs, patience=2)
    try:
        if val is None:
            raise ValueError("no validation rows")
        result = train(train_bars, job.family, job.window, job.horizon, seed=job.seed, target=job.target,
                       options=options, name=job.name)
    except ValueError as exc:  # not enough contiguous bars for the splits: wait for more
        log.warning("no challenger this round: %s", exc)
        return ChallengeResult(Decision(False, "not_enough_history"), seconds=time.monotonic() - started)

    y = val.y.astype(np.float64)
    pers = predict(make_net("persistence", job.window, job.horizon, job.target)[0], val.x)
    chal = predict(result.module, val.x)
    champ = champion_predictions(job, val)
    t = job.target
    ref_family = REFERENCE[t]
    ref_result = None
    if ref_family == "persistence":
        ref = pers
    else:
        ref_result = train(train_bars, ref_family, job.window, job.horizon, seed=job.seed, target=t, name=job.name)
        ref = predict(ref_result.module, val.x)
    scores = {"challenger": score(y, chal, pers, t), "persistence": score(y, pers, pers, t)}
    if ref_family != "persistence":
        scores[ref_family] = score(y, ref, pers, t)
    if champ is not None:
        scores["champion"] = score(y, champ, pers, t)
    decision = decide(y, chal, champ, ref, job.margin, job.alpha, job.horizon, t, val.ts, job.round_index)
    out = ChallengeResult(decision, scores)
    if decision.promote:
        out.kind, out.onnx, out.card = "challenger", *_export(result, job, scores, val, decision)
    elif job.fallback and champ is not None and _loses(scores["champion"], scores[ref_family], t):
        # Live and validation scores agree the champion loses to the reference: serve the reference instead.
        base = ref_result or train(train_bars, "persistence", job.window, job.horizon, seed=job.seed, target=t,
                                   name=job.name)
        out.kind, out.onnx, out.card = "fallback", *_export(base, job, scores, val, decision)
    if out.kind and out.onnx is None:
        out.decision, out.kind = Decision(False, "export_failed", decision.p_value), ""
    out.seconds = time.monotonic() - started
    return out


def _loses(champion: SliceScore, reference: SliceScore, target: str) -> bool:
    if target == "volatility" and champion.qlike is not None and reference.qlike is not None:
        return champion.qlike > reference.qlike
    return champion.mae > reference.mae


def _export(result: TrainResult, job: ChallengeJob, scores: dict[str, SliceScore], val: Samples,
            decision: Decision) -> tuple[bytes | None, dict[str, Any] | None]:
    try:
        onnx, card = export_checked(result)  # parity vs torch, or ExportError
    except ExportError as exc:
        log.error("export of %s refused: %s", result.card["family"], exc)
        return None, None
    merged = _card(result, job, scores, val, decision)
    merged["parity_max_abs_diff"] = card["parity_max_abs_diff"]
    return onnx, merged

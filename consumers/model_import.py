"""Bring your own model: an ONNX file and its card, held to the serving contract and the champion gate.

1. Contract: the card names ``window``, ``horizon``, ``features`` and ``target``; they must be
   what the stream serves (the configured window and horizon, this code's feature list, the
   ``log_return`` target); a ``sha256`` in the card must match the file.
2. Smoke run: the same load a worker does (``models.serving.Forecaster.load``: graph ``x`` (B,
   window, F) -> ``y`` (B, 4) with a dynamic batch, finite outputs), plus determinism (the same
   window twice gives the same forecast). A foreign graph has no torch twin, so this replaces
   the ONNX-vs-torch parity check of trained models.
3. Gate: the same rule as trained challengers (``consumers.compare.decide``), on the same kind
   of validation slice (the newest ``val_bars`` bars of every symbol), against persistence and
   the serving champion.

Every refusal is an ``ImportRefused`` with a one-line reason; nothing is written before the gate passes.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chaincast.consumers.challenge import ChallengeJob, champion_predictions, split_at, validation_slice
from chaincast.consumers.compare import Decision, SliceScore, decide, score
from chaincast.consumers.registry import ModelEntry
from chaincast.models.features import FEATURES
from chaincast.models.serving import Forecaster, ModelRejected
from chaincast.models.targets import TARGETS

SERVED_TARGET = "log_return"  # what the predict agent turns into price_hat and a band


class ImportRefused(Exception):
    """The model may not serve; the message says why in one line."""


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    scores: dict[str, SliceScore]
    card: dict[str, Any]  # the card to store when the decision promotes


def read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImportRefused(f"unreadable card {path}: {exc}") from None
    if not isinstance(card, dict):
        raise ImportRefused(f"card {path} is not a JSON object")
    return card


def check_contract(onnx_bytes: bytes, card: dict[str, Any], window: int, horizon: int,
                   file_name: str = "model.onnx") -> Forecaster:
    """The card against what the stream serves, then the worker's own load and a determinism check."""
    missing = [k for k in ("window", "horizon", "features", "target") if k not in card]
    if missing:
        raise ImportRefused(f"the card lacks {', '.join(missing)}")
    if card["features"] != list(FEATURES):
        raise ImportRefused(f"card features {card['features']} are not the served {list(FEATURES)}")
    if card["target"] not in TARGETS:
        raise ImportRefused(f"unknown target {card['target']!r}; known: {', '.join(TARGETS)}")
    if card["target"] != SERVED_TARGET:
        raise ImportRefused(f"target {card['target']!r} is not the served {SERVED_TARGET!r}")
    if card["window"] != window or card["horizon"] != horizon:
        raise ImportRefused(f"window/horizon {card['window']}/{card['horizon']} differ from the served "
                            f"{window}/{horizon} (CHAINCAST_WINDOW / CHAINCAST_HORIZON)")
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    if card.get("sha256", sha) != sha:
        raise ImportRefused(f"the card's sha256 {str(card['sha256'])[:12]} is not the file's {sha[:12]}")
    full = {"family": "imported", **card, "sha256": sha}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / Path(file_name).with_suffix(".onnx").name  # refusals name the user's file
        onnx_path.write_bytes(onnx_bytes)
        onnx_path.with_suffix(".json").write_text(json.dumps(full))
        try:
            model = Forecaster.load(onnx_path)
        except ModelRejected as exc:
            raise ImportRefused(str(exc)) from None
    x = (np.random.default_rng(1).standard_normal((8, window, len(FEATURES))) * 1e-3).astype(np.float32)
    first, again = model.predict(x), model.predict(x)
    if not np.array_equal(first, again):
        raise ImportRefused("the model is not deterministic: the same windows gave different forecasts")
    if not np.isfinite(first).all():
        raise ImportRefused("the model gives non-finite forecasts on plausible windows")
    return model


def judge(model: Forecaster, bars: dict[str, np.ndarray], val_bars: int, margin: float, alpha: float,
          champion: ModelEntry | None) -> Verdict:
    """The challenger gate on the newest ``val_bars`` bars of every symbol."""
    from chaincast.models.evaluate import predict  # torch: the import command trains nothing but scores
    from chaincast.models.families import make_net  # persistence exactly as the retrainer does

    _, cut_ts = split_at(bars, val_bars)
    val = validation_slice(bars, cut_ts, model.window, model.horizon, SERVED_TARGET) if cut_ts else None
    if val is None or len(val) == 0:
        raise ImportRefused(f"not enough bars for a validation slice of {val_bars} bars per symbol")
    y = val.y.astype(np.float64)
    pers = predict(make_net("persistence", model.window, model.horizon, SERVED_TARGET)[0], val.x)
    mine = model.predict(val.x).astype(np.float64)
    job = ChallengeJob(bars=bars, name=model.name, family=model.family, window=model.window, horizon=model.horizon,
                       val_bars=val_bars, max_epochs=1, margin=margin, alpha=alpha,
                       champion_path=str(champion.onnx_path) if champion else None,
                       champion_sha256=champion.sha256 if champion else None)
    champ = champion_predictions(job, val)
    scores = {"challenger": score(y, mine, pers), "persistence": score(y, pers, pers)}
    if champ is not None:
        scores["champion"] = score(y, champ, pers)
    decision = decide(y, mine, champ, pers, margin, alpha, model.horizon)
    own = scores["challenger"]
    card = {**model.card, "imported": True, "parent": champion.version if champion else None,
            "trigger": "import",
            "metrics": {**model.card.get("metrics", {}), "holdout": {
                "mae": own.mae, "skill_vs_persistence": own.skill, "coverage_80": own.coverage_80, "rows": own.rows}},
            "validation_slice": {"first_ts": int(val.ts.min()), "last_ts": int(val.ts.max()), "rows": len(val),
                                 "p_value": decision.p_value, **{r: s.as_dict() for r, s in scores.items()}}}
    card.pop("version", None)  # the registry names it by content
    return Verdict(decision, scores, card)

"""One retraining round without a broker: who is promoted, who is refused, and why."""

from __future__ import annotations

import numpy as np

from chaincast.consumers.challenge import ChallengeJob, run_challenge, split_at, validation_slice
from chaincast.consumers.registry import ModelEntry
from chaincast.models.serving import Forecaster
from tests.consumers.conftest import WINDOW


def job(bars: dict[str, np.ndarray], family: str, champion: ModelEntry | None = None, **kw) -> ChallengeJob:
    base = dict(bars=bars, name="forecaster", family=family, window=WINDOW, horizon=1, val_bars=240,
                max_epochs=20, margin=0.02, alpha=0.1, champion_path=str(champion.onnx_path) if champion else None,
                champion_sha256=champion.sha256 if champion else None,
                parent=champion.version if champion else None)
    return ChallengeJob(**{**base, **kw})


def test_validation_slice_is_the_newest_bars_and_training_never_sees_it(ar) -> None:
    train_part, cut = split_at(ar, 240)
    val = validation_slice(ar, cut, WINDOW, 1, "log_return")
    assert all(len(t) == 1200 - 240 for t in train_part)
    assert val is not None and len(val) == 2 * (240 - 1)  # the last bar of each symbol has no target yet
    assert val.ts.min() == min(cut.values()) and all(t[-1, 0] < val.ts.min() for t in train_part)


def test_better_challenger_is_promoted_with_its_lineage(ar, bad_champion) -> None:
    registry, champion = bad_champion
    result = run_challenge(job(ar, "linear", champion))
    assert result.decision.promote and result.kind == "challenger", result.decision
    assert result.decision.p_value is not None and result.decision.p_value < 0.1
    assert result.scores["challenger"].mae < result.scores["champion"].mae * 0.98
    assert result.scores["challenger"].mae < result.scores["persistence"].mae
    entry = registry.put(result.onnx, result.card)
    assert entry.card["parent"] == champion.version and entry.card["metrics"]["holdout"]["skill_vs_persistence"] > 0
    assert Forecaster.load(entry.onnx_path, expected_sha256=entry.sha256).family == "linear"


def test_worse_challenger_is_refused(ar, bad_champion) -> None:
    _, champion = bad_champion
    result = run_challenge(job(ar, "ema_drift", champion))  # the same bad idea again
    assert not result.decision.promote and result.onnx is None
    assert result.decision.reason == "worse_than_reference"


def test_a_margin_the_challenger_cannot_reach_refuses_it(ar, bad_champion) -> None:
    _, champion = bad_champion
    result = run_challenge(job(ar, "linear", champion, margin=0.5))
    assert result.decision.reason == "below_margin" and result.onnx is None


def test_live_trigger_falls_back_to_persistence_when_the_challenger_also_loses(ar, bad_champion) -> None:
    _, champion = bad_champion
    result = run_challenge(job(ar, "ema_drift", champion, fallback=True, trigger="live"))
    assert result.kind == "fallback" and result.card["family"] == "persistence" and result.onnx
    assert result.card["trigger"] == "live" and result.decision.reason == "worse_than_reference"


def test_too_little_history_is_a_refusal_not_a_crash(ar) -> None:
    short = {s: b[:300] for s, b in ar.items()}
    result = run_challenge(job(short, "linear"))
    assert result.decision.reason == "not_enough_history" and result.onnx is None

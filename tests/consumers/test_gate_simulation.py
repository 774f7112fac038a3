"""A gate that cannot be gamed: correlated symbols, frequent rounds, useless bands, volatility by QLIKE."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chaincast.consumers.challenge import ChallengeJob, run_challenge
from chaincast.consumers.compare import decide, dm_pvalue, minute_means, spent_alpha
from chaincast.consumers.registry import Registry
from tests.consumers.synth import ar_bars

ROUNDS = 50
ROUND_BARS = 60  # new bars per symbol between rounds
HISTORY = 900  # bars per symbol each round trains and validates on


def test_rows_of_one_minute_count_once() -> None:
    """Two symbols with the same loss differential are one observation per minute, not two."""
    rng = np.random.default_rng(3)
    a, b = np.abs(rng.normal(0, 1.0, 200)), np.abs(rng.normal(0, 0.97, 200))
    ts = np.arange(200) * 60_000
    one = dm_pvalue(minute_means(a, ts), minute_means(b, ts))
    both = dm_pvalue(minute_means(np.tile(a, 2), np.tile(ts, 2)), minute_means(np.tile(b, 2), np.tile(ts, 2)))
    naive = dm_pvalue(np.tile(a, 2), np.tile(b, 2))
    assert both == one and naive < one  # pooling rows would have overstated the evidence


def test_alpha_is_spent_across_rounds() -> None:
    assert sum(spent_alpha(0.1, k) for k in range(1, 10_000)) < 0.1
    rng = np.random.default_rng(4)
    y = rng.normal(0, 1e-3, 600)
    champ = np.column_stack([np.zeros(600)] * 4)
    chal = champ.copy()
    chal[:, 0] = 0.2 * y + rng.normal(0, 5e-4, 600)  # a small real edge (p ~ 0.015): enough early, not at round 40
    first = decide(y, chal, champ, champ, 0.0, 0.1, round_index=1)
    late = decide(y, chal, champ, champ, 0.0, 0.1, round_index=40)
    assert first.p_value == late.p_value
    assert first.promote and not late.promote and late.reason == "not_significant"


def test_a_sharper_point_with_a_useless_band_is_refused() -> None:
    rng = np.random.default_rng(5)
    y = rng.normal(0, 1e-3, 400)
    ref = np.column_stack([np.zeros(400), np.full(400, -1.3e-3), np.zeros(400), np.full(400, 1.3e-3)])
    chal = ref.copy()
    chal[:, 0] = 0.5 * y
    chal[:, 1], chal[:, 3] = -0.1, 0.1  # covers everything, says nothing
    assert decide(y, chal, None, ref, 0.0, 0.1).reason == "worse_band"


def test_volatility_is_judged_by_qlike_against_the_reference() -> None:
    rng = np.random.default_rng(6)
    sigma = np.exp(rng.normal(-7, 0.5, 500))
    y = sigma * np.abs(rng.normal(1, 0.3, 500))
    har = np.column_stack([sigma, 0.7 * sigma, sigma, 1.3 * sigma])
    under = har * 0.5  # half the volatility: lower MAE on small moves, much worse QLIKE
    assert decide(y, under, None, har, 0.0, 0.1, target="volatility").reason == "worse_than_reference"
    assert decide(y, har * 1.0, None, har * 1.6, 0.0, 0.1, target="volatility").promote


def test_random_walk_promotes_at_most_5_of_50_rounds(tmp_path: Path) -> None:
    """Seeded pure random walk, the linear family, margin 0, alpha 0.1, one round every 60 bars."""
    total = HISTORY + ROUNDS * ROUND_BARS
    bars = {s: ar_bars(total, phi=0.0, seed=seed) for s, seed in (("AAA", 11), ("BBB", 12))}
    registry = Registry(tmp_path / "registry")
    champion, rounds_vs_champion, promotions = None, 0, 0
    for r in range(ROUNDS):
        end = HISTORY + r * ROUND_BARS
        rounds_vs_champion += 1
        job = ChallengeJob(
            bars={s: b[end - HISTORY : end] for s, b in bars.items()}, name="forecaster", family="linear",
            window=16, horizon=1, val_bars=240, max_epochs=2, margin=0.0, alpha=0.1,
            champion_path=str(champion.onnx_path) if champion else None,
            champion_sha256=champion.sha256 if champion else None, seed=r, round_index=rounds_vs_champion,
        )
        result = run_challenge(job)
        if result.onnx is not None and result.card is not None:
            promotions += 1
            champion = registry.set_champion("forecaster", registry.put(result.onnx, result.card).version)
            rounds_vs_champion = 0
    assert promotions <= 5, f"{promotions} promotions of a no-edge challenger in {ROUNDS} rounds"

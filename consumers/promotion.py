"""Choosing what serves, and announcing it.

The rule everywhere: a model serves only if it beats persistence on data it
did not train on; otherwise the persistence model (zero return, a volatility
band) serves. Announcing = the registry's champion pointer and a ModelUpdate on
the compacted ``models.updates`` topic (key = model name). The model hash in
Redis is the workers' to write, once each has accepted the version (a version
every worker refuses never shows as serving).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from chaincast.consumers.registry import ModelEntry, Registry
from chaincast.models.timeunits import now_ms
from chaincast.stream.model_trust import signed
from chaincast.stream.publish import Publisher
from chaincast.stream.records import ModelUpdate
from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)


def test_skill(entry: ModelEntry) -> float:
    """Skill vs persistence on the TEST split: the validation split already chose the epoch (early stopping)."""
    return float(entry.card.get("metrics", {}).get("test", {}).get("skill_vs_persistence", float("-inf")))


def test_qlike(entry: ModelEntry) -> float:
    return float(entry.card.get("metrics", {}).get("test", {}).get("qlike", float("inf")))


def initial_champion(registry: Registry, name: str, bars_list: list[np.ndarray], window: int, horizon: int,
                     family: str = "linear", seed: int = 0, target: str = "log_return") -> ModelEntry:
    """The champion of ``name``; on first start, train ``family`` and gate it against the reference.

    The gate reads the TEST split (rows neither training nor early stopping saw): for returns the
    candidate must have positive skill vs persistence, for volatility a lower QLIKE than HAR-RV;
    otherwise the reference itself serves.
    """
    if (entry := registry.champion(name)) is not None:
        return entry
    from chaincast.models.backtest import REFERENCE  # training needs torch: only here, on a first start
    from chaincast.models.build import build_model
    from chaincast.models.train import FitOptions

    options = FitOptions(max_epochs=8, patience=2)
    reference = REFERENCE[target]
    fallback = build_model(bars_list, reference, window, horizon, registry, target=target, seed=seed, name=name)
    candidate = build_model(bars_list, family, window, horizon, registry, target=target, seed=seed, options=options,
                            name=name)
    if target == "volatility":
        wins = test_qlike(candidate) < test_qlike(fallback)
    else:
        wins = test_skill(candidate) > 0
    chosen = candidate if wins else fallback
    log.warning("initial model for %s: %s (test skill vs persistence %.4f, vs %s)",
                name, chosen.card["family"], test_skill(candidate), reference)
    return registry.set_champion(name, chosen.version)


def model_update(name: str, entry: ModelEntry) -> ModelUpdate:
    metrics = {f"{split}_{k}": float(v) for split, m in entry.card.get("metrics", {}).items()
               for k, v in m.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    return ModelUpdate(name=name, version=entry.version, uri=entry.onnx_path.resolve().as_uri(),
                       sha256=entry.sha256, family=entry.card.get("family", ""), metrics=metrics,
                       created_at=now_ms(), parent=entry.card.get("parent"))


async def announce(settings: Settings, name: str, entry: ModelEntry) -> ModelUpdate:
    update = signed(model_update(name, entry), settings.model_signing_key)
    async with Publisher(settings) as pub:
        await pub.send_and_wait(settings.topic_models, name, update)
    return update

"""Which fee model serves, for every (target, horizon): the gate against the reference.

A fee model serves only if it beats its reference (EIP-1559 for the base fee,
persistence for fullness) on validation blocks it did not train on; otherwise
the reference itself, exported like any model, serves. Only the chosen model is
exported and stored. Announcing is the market models' (``consumers.promotion.announce``):
the champion pointer, ``models.updates`` and the ``{prefix}model:{name}`` hash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from chaincast.consumers.registry import ModelEntry, Registry
from chaincast.models.fee_build import FeeCandidate, fee_model_name, store_fee_model, train_fee_model
from chaincast.models.fee_models import FeeFit
from chaincast.models.fees import FEE_TARGETS, REFERENCE
from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)

INITIAL_FIT = FeeFit(max_epochs=4, patience=1, lgbm_trees=150)


def gate(candidates: list[FeeCandidate], reference: FeeCandidate, margin: float = 0.0) -> FeeCandidate:
    """The candidate with the best validation skill over the reference, if above ``margin``; else the reference."""
    best = max(candidates, key=lambda c: c.val_skill, default=None)
    return best if best is not None and best.val_skill > margin else reference


def initial_fee_champions(registry: Registry, settings: Settings, blocks: np.ndarray,
                          families: tuple[str, ...] = ("linear",), options: FeeFit = INITIAL_FIT,
                          on_champion: Callable[[str, ModelEntry], None] | None = None) -> dict[str, ModelEntry]:
    """The champion of every fee name; on first start, fit ``families`` and the reference and gate them.
    ``on_champion`` hears each as soon as it is chosen (``up`` announces it while the rest train)."""
    out = {}
    for horizon in settings.fee_horizons:
        for target in FEE_TARGETS:
            name = fee_model_name(settings.fee_model_prefix, target, horizon)
            if (entry := registry.champion(name)) is None:
                def fit(family: str) -> FeeCandidate:
                    return train_fee_model(blocks, family, target, horizon, settings.fee_window, name, options)

                chosen = gate([fit(f) for f in families], fit(REFERENCE[target]))
                entry = registry.set_champion(name, store_fee_model(chosen, registry).version)
                log.warning("initial fee model %s: %s (validation skill vs %s %+.4f)", name, chosen.card["family"],
                            REFERENCE[target], chosen.val_skill)
            out[name] = entry
            if on_champion is not None:
                on_champion(name, entry)
    return out

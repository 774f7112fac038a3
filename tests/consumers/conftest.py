"""Small, fast model fixtures for the retrainer's tests: synthetic predictable bars, one thread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from chaincast.consumers.registry import ModelEntry, Registry
from chaincast.models.build import build_model
from tests.consumers.synth import ar_bars

WINDOW = 32


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the machine's two cores are shared


@pytest.fixture(scope="module")
def ar() -> dict[str, np.ndarray]:
    return {"AAA": ar_bars(1200, seed=1), "BBB": ar_bars(1200, seed=2)}


@pytest.fixture
def bad_champion(tmp_path: Path, ar: dict[str, np.ndarray]) -> tuple[Registry, ModelEntry]:
    """EMA drift on mean-reverting returns: a served model that is worse than persistence."""
    registry = Registry(tmp_path / "registry")
    entry = build_model(list(ar.values()), "ema_drift", WINDOW, 1, registry, name="forecaster")
    registry.set_champion("forecaster", entry.version)
    return registry, entry

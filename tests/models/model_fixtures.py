"""Fixtures of the model tests: real market data shipped in tests/fixtures/data/market.

Not a conftest.py: with ``--doctest-modules`` two non-package conftest.py files
(tests/consumers/ has one) collide as module ``conftest``. Test files import
these fixtures by name instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from chaincast.models.history import load_bars

MARKET = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "market"


torch.set_num_threads(1)  # the machine's two cores are shared; set on import by every model test


@pytest.fixture(scope="session")
def market() -> Path:
    return MARKET


@pytest.fixture(scope="session")
def btc_2023() -> np.ndarray:
    """BTCUSDT 1m bars from 2023-03-16 (66k rows, one real 1.3 h gap on 03-24)."""
    path = MARKET / "binance_BTCUSDT_1m_2023-03.csv.gz"
    return load_bars(path)


@pytest.fixture(scope="session")
def btc_slice(btc_2023: np.ndarray) -> np.ndarray:
    """The first 4,000 bars: enough for every split, quick to train on."""
    return btc_2023[:4000]


@pytest.fixture(scope="session")
def eth_2023() -> np.ndarray:
    """ETHUSDT 1m bars over the same minutes as ``btc_2023``."""
    return load_bars(MARKET / "binance_ETHUSDT_1m_2023-03.csv.gz")

"""The Redis key layout is an interface (README "Redis"): these are the documented spellings.

This file and stream/redis_layout.py are the only places key strings are written (tests/test_structure.py).
"""

from __future__ import annotations

from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.settings import load_settings


def test_the_documented_keys(tmp_path) -> None:
    keys = RedisLayout.of(load_settings(CHAINCAST_HOME=str(tmp_path)))
    assert keys.latest("BTCUSDT") == "cc:pred:BTCUSDT"  # the default forecast keeps its key
    assert keys.history("BTCUSDT") == "cc:preds:BTCUSDT"
    assert keys.latest("BTCUSDT", "volatility", 5) == "cc:pred:BTCUSDT:volatility:5"
    assert keys.history("BTCUSDT", "volatility", 5) == "cc:preds:BTCUSDT:volatility:5"
    assert keys.model("forecaster") == "cc:model:forecaster"
    assert keys.score("BTCUSDT") == "cc:score:BTCUSDT"


def test_the_prefix_is_configurable(tmp_path) -> None:
    keys = RedisLayout.of(load_settings(CHAINCAST_HOME=str(tmp_path), CHAINCAST_REDIS_PREFIX="x:"))
    assert keys.latest("ETHUSDT") == "x:pred:ETHUSDT"

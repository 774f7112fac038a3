"""CHAINCAST_FORECASTS: the served forecasters, their model names and Redis keys; bad values are one line."""

from __future__ import annotations

import pytest

from chaincast.consumers.retrainer import Retrainer
from chaincast.models.targets import ForecastSpec
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.settings import SettingsError, load_settings


def test_default_is_the_return_forecaster_at_the_configured_horizon() -> None:
    assert load_settings(CHAINCAST_HORIZON="3").forecast_specs == (ForecastSpec("log_return", 3),)


def test_each_forecaster_has_its_own_name_keys_and_retrainer(tmp_path) -> None:
    s = load_settings(CHAINCAST_FORECASTS="log_return:1,volatility:5", CHAINCAST_HOME=str(tmp_path))
    ret, vol = s.forecast_specs
    assert (ret, vol) == (ForecastSpec("log_return", 1), ForecastSpec("volatility", 5))
    names = [Retrainer(s, spec=spec).name for spec in s.forecast_specs]
    assert names == ["forecaster", "forecaster-volatility-5"]
    keys = RedisLayout.of(s)
    # The spellings themselves are the layout's doctests (stream/redis_layout.py, the keys' one owner).
    assert keys.latest("BTCUSDT") == RedisLayout(s.redis_prefix).latest("BTCUSDT")  # the default keeps its key
    extra = keys.latest("BTCUSDT", vol.target, vol.horizon)
    assert extra != keys.latest("BTCUSDT") and extra.endswith(f"BTCUSDT:{vol.target}:{vol.horizon}")


@pytest.mark.parametrize("value,message", [
    ("price:1", "unknown target 'price'"),
    ("volatility:0", "must be 1..1440"),
    ("volatility:x", "not an integer"),
    ("log_return:1,log_return:1", "given twice"),
    (",", "at least one forecast"),
])
def test_bad_forecasts_are_one_line(value: str, message: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(CHAINCAST_FORECASTS=value)
    text = str(err.value)
    assert "\n" not in text and text.startswith("CHAINCAST_FORECASTS") and message in text

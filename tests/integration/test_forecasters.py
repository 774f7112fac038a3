"""Every forecaster of CHAINCAST_FORECASTS served live: a return and a volatility forecaster, calibrated and scored.

A real worker with CHAINCAST_FORECASTS=log_return:1,volatility:5 and one model announced per
forecaster (the names `chaincast up` gives them) replays real bars: both forecasters' hashes and
histories land in Redis and on the `predictions` topic, a volatility record carries no price_hat,
each served band is the model's own band stretched around q50 by the live calibration, and the
live coverage of each forecaster is exported as a metric.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import numpy as np
import pytest
import redis

from chaincast.consumers.promotion import announce
from chaincast.consumers.registry import Registry
from chaincast.deploy.embedded import Process, free_port
from chaincast.deploy.metrics import scrape_samples
from chaincast.models.build import build_model
from chaincast.models.serving import Forecaster
from chaincast.producers.replay import Market, replay
from chaincast.stream.predict import forecast, history_size, push, ready
from chaincast.stream.records import Bar, Prediction
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.topics import ensure_topics
from tests.integration.conftest import day_of, read_topic

pytestmark = pytest.mark.one_broker  # serving several forecasters is the worker's logic; delivery is proven elsewhere

SYMBOLS = ("BTCUSDT", "ETHUSDT")
BARS = 400  # replayed per symbol; the last one stays open
FORECASTS = "log_return:1,volatility:5"
VOL_MODEL = "forecaster-volatility-5"  # ForecastSpec.model_name for the second forecaster


def wait_for(what: str, check, timeout: float = 300.0) -> None:  # noqa: ANN001 - a predicate
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.5)


def raw_forecasts(bars: dict[str, list[Bar]], entry, window: int, size: int) -> dict[tuple[str, int], Prediction]:
    """What the model itself says for each published bar (before the live calibration)."""
    model = Forecaster.load(entry.onnx_path, expected_sha256=entry.sha256)
    out = {}
    for sym, series in bars.items():
        rows: list[list[float]] = []
        for bar in series:
            push(rows, bar, size)
            if (r := ready(bar, rows, window, arrived=0.0)) is not None:
                (p,), _ = forecast(model, [r])
                out[(sym, p.bar_ts)] = p
    return out


@pytest.mark.timeout(1200)
def test_return_and_volatility_forecasters_serve_side_by_side(settings_for, tmp_path):
    settings = settings_for(CHAINCAST_FORECASTS=FORECASTS)
    asyncio.run(ensure_topics(settings))
    registry = Registry(settings.registry_dir)
    train = [day_of("BTCUSDT")]
    returns = build_model(train, "ema_drift", settings.window, 1, registry, name=settings.model_name)
    vol = build_model(train, "har", settings.window, 5, registry, target="volatility", name=VOL_MODEL)
    for name, entry in ((settings.model_name, returns), (VOL_MODEL, vol)):
        registry.set_champion(name, entry.version)
        asyncio.run(announce(settings, name, entry))

    port = free_port()
    worker = Process("worker", [sys.executable, "-m", "chaincast.deploy.cli", "worker"],
                     env={**os.environ, **settings.env(), "CHAINCAST_METRICS_PORT": str(port)},
                     log_path=tmp_path / "worker.log").start()
    keys = RedisLayout.of(settings)
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    size = history_size(settings.window, 5)
    n = BARS - 1 - size + 1  # forecastable bars per symbol and forecaster (no gap in the bundled day)

    def coverage() -> dict[tuple[str, str], float]:
        return {(s["symbol"], s["forecaster"]): v for name, s, v in scrape_samples(port)
                if name == "chaincast_live_coverage_80"}

    try:
        asyncio.run(replay(settings, [Market(s, day_of(s)[:BARS]) for s in SYMBOLS]))
        msgs = asyncio.run(read_topic(settings, settings.topic_predictions, lambda m: len(m) >= 4 * n, timeout=600))
        bar_msgs = asyncio.run(read_topic(settings, settings.topic_bars,
                                          lambda m: len(m) >= len(SYMBOLS) * (BARS - 1), timeout=300))
        wait_for("both forecasters' live coverage", lambda: {(s, f) for s in SYMBOLS
                                                              for f in ("log_return:h1", "volatility:h5")}
                 <= set(coverage()))
        metrics = scrape_samples(port)
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]

    preds = [Prediction.loads(m.value) for m in msgs]
    by_kind = {k: [p for p in preds if (p.target, p.horizon) == k] for k in (("log_return", 1), ("volatility", 5))}
    for kind, ps in by_kind.items():
        assert sorted(p.symbol for p in ps) == sorted(SYMBOLS * n), kind
    assert all(p.price_hat is None and p.model_name == VOL_MODEL for p in by_kind["volatility", 5])
    assert all(p.price_hat is not None and p.price_hat > 0 for p in by_kind["log_return", 1])
    assert all(0 <= p.q10 <= p.q50 <= p.q90 for p in by_kind["volatility", 5])

    # The served band is the model's own, stretched around q50 by one live scale per market and forecaster.
    bars: dict[str, list[Bar]] = {s: [] for s in SYMBOLS}
    for m in bar_msgs:
        bar = Bar.loads(m.value)
        bars[bar.symbol].append(bar)
    for kind, entry, window in ((("log_return", 1), returns, settings.window), (("volatility", 5), vol, settings.window)):
        raw = raw_forecasts({s: sorted(b, key=lambda b: b.ts) for s, b in bars.items()}, entry, window, size)
        scale = []
        for p in by_kind[kind]:
            own = raw[(p.symbol, p.bar_ts)]
            assert np.isclose(p.q50, own.q50, rtol=1e-5, atol=1e-9) and np.isclose(p.y_hat, own.y_hat, rtol=1e-5,
                                                                                   atol=1e-9)
            scale.append((p.q90 - p.q50) / (own.q90 - own.q50))
        assert max(abs(s - 1) for s in scale) > 1e-3, f"{kind}: the bands were never calibrated"
        assert len({round(s, 9) for s in scale}) > 10  # the scale moves as forecasts are realised

    for sym in SYMBOLS:
        default, volatility = r.hgetall(keys.latest(sym)), r.hgetall(keys.latest(sym, "volatility", 5))
        assert default["target"] == "log_return" and "price_hat" in default
        assert volatility["target"] == "volatility" and "price_hat" not in volatility
        assert volatility["model_name"] == VOL_MODEL and int(volatility["horizon"]) == 5
        assert r.xlen(keys.history(sym)) == n and r.xlen(keys.history(sym, "volatility", 5)) == n
        assert r.hget(keys.score(sym, "volatility", 5), "forecaster") == "volatility:h5"
        assert r.hget(keys.score(sym), "forecaster") == "log_return:h1"
    assert r.hget(keys.model(VOL_MODEL), "version") == vol.version
    assert r.hget(keys.model(settings.model_name), "version") == returns.version

    names = {name for name, _, _ in metrics}
    assert {"chaincast_forecast_volatility", "chaincast_band_scale", "chaincast_live_coverage_80"} <= names
    vol_gauge = {(s["symbol"], s["band"]) for name, s, _ in metrics if name == "chaincast_forecast_volatility"}
    assert vol_gauge == {(sym, band) for sym in SYMBOLS for band in ("mid", "q10", "q90")}
    assert all(0.0 <= v <= 1.0 for v in coverage().values())

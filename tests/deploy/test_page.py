"""The live page: served over HTTP, fed over its websocket from Redis, rendered by headless Chromium."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from chaincast.deploy.page import serve_page
from chaincast.stream.records import Prediction
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.sink import RedisSink
from tests.deploy.conftest import require

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars", "--lang=en-US"]


def prediction(symbol: str, minute: int, price: float) -> Prediction:
    return Prediction(exchange="binance", symbol=symbol, bar_ts=1_680_307_200_000 + minute * 60_000, horizon=1,
                      y_hat=0.0004, q10=-0.002, q50=0.0004, q90=0.0021, price=price, price_hat=price * 1.0004,
                      model_name="forecaster", model_version="v-test", created_at=0, latency_ms=1.0)


@pytest.fixture
def page(settings_for) -> Iterator[tuple[str, object]]:  # noqa: ANN001 - the conftest factory
    """Twenty predictions per symbol in Redis (written by the real sink) and the page serving them."""
    settings = settings_for(CHAINCAST_SYMBOLS="BTCUSDT,ETHUSDT")

    async def fill() -> None:
        sink = RedisSink(settings.redis_url, settings.redis_prefix)
        await sink.write([prediction(s, m, base + 3 * m) for m in range(20)
                          for s, base in (("BTCUSDT", 28_000.0), ("ETHUSDT", 1_800.0))])
        await sink.client.hset(RedisLayout.of(settings).score("BTCUSDT"),
                               mapping={"version": "v-test", "skill": "0.042", "mae": "0.0011"})
        await sink.close()

    asyncio.run(fill())
    bound: list[int] = []
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stopping = asyncio.Event()

    def run() -> None:
        loop.run_until_complete(serve_page(settings, "127.0.0.1", 0, interval=0.2, stopping=stopping,
                                           on_ready=lambda p: (bound.append(p), ready.set())))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30), "the page server did not start"
    yield f"http://127.0.0.1:{bound[0]}", settings
    loop.call_soon_threadsafe(stopping.set)
    thread.join(10)


def test_http_serves_the_page_and_404s_the_rest(page) -> None:  # noqa: ANN001
    url, _ = page
    with urllib.request.urlopen(url + "/") as resp:
        assert resp.headers["Content-Type"].startswith("text/html")
        assert b"chaincast" in resp.read()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url + "/nope")
    assert err.value.code == 404


def test_websocket_pushes_history_score_and_model(page) -> None:  # noqa: ANN001
    url, _ = page

    async def first() -> dict:
        async with connect(url.replace("http", "ws") + "/ws") as ws:
            return json.loads(await ws.recv())

    snap = asyncio.run(first())
    btc = snap["symbols"]["BTCUSDT"]
    assert len(btc["points"]) == 20
    assert [p["bar_ts"] for p in btc["points"]] == sorted(p["bar_ts"] for p in btc["points"])
    last = btc["points"][-1]
    assert last["lo"] < last["price"] < last["price_hat"] < last["hi"]
    assert btc["score"]["skill"] == "0.042"
    assert snap["symbols"]["ETHUSDT"]["score"] is None


def test_headless_chromium_renders_live_data(page, tmp_path: Path) -> None:  # noqa: ANN001
    chromium = require("chromium")
    url, _ = page
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    for _attempt in range(5):  # a loaded machine can miss the virtual-time budget: try again, boundedly
        dom = subprocess.run([chromium, *flags, "--virtual-time-budget=5000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120).stdout
        if 'id="card-ETHUSDT"' in dom:
            break
    assert 'id="card-BTCUSDT"' in dom and 'id="card-ETHUSDT"' in dom, dom[-2000:]
    assert re.search(r'id="card-BTCUSDT"[^>]*data-points="20"', dom)
    assert "28,057.00" in dom  # the last BTC close (28_000 + 3 * 19), as the page formats it
    assert "polyline" in dom  # the chart was drawn
    assert "v-test" in dom and "4.2%" in dom  # model version and live skill
    shot = tmp_path / "page.png"
    subprocess.run([chromium, *flags, "--virtual-time-budget=5000", "--window-size=1200,900",
                    f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000

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
from chaincast.stream.records import FeePrediction, Prediction
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.sink import RedisSink
from tests.deploy.conftest import require

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars", "--lang=en-US"]


def prediction(symbol: str, minute: int, price: float) -> Prediction:
    return Prediction(exchange="binance", symbol=symbol, bar_ts=1_680_307_200_000 + minute * 60_000, horizon=1,
                      y_hat=0.0004, q10=-0.002, q50=0.0004, q90=0.0021, price=price, price_hat=price * 1.0004,
                      model_name="forecaster", model_version="v-test", created_at=0, latency_ms=1.0)


def fee(block: int, horizon: int, block_hash: str = "") -> FeePrediction:
    base = 20.0 + 0.1 * block
    return FeePrediction(chain_id=1, block=18_640_000 + block, block_hash=block_hash or f"0x{block:064x}",
                         timestamp=1_700_000_000 + 12 * block, target="base_fee", horizon=horizon, y_hat=0.01,
                         q10=-0.05, q50=0.01, q90=0.06, base_fee_gwei=base, forecast_gwei=base * 1.01005,
                         forecast_q10_gwei=base * 0.95123, forecast_q90_gwei=base * 1.06184, reference=0.0,
                         model_name="fees.base_fee.h5", model_version="fee-v1", created_at=0)


@pytest.fixture
def page(settings_for) -> Iterator[tuple[str, object]]:  # noqa: ANN001 - the conftest factory
    """Twenty predictions per symbol in Redis (written by the real sink) and the page serving them."""
    settings = settings_for(CHAINCAST_SYMBOLS="BTCUSDT,ETHUSDT")

    async def fill() -> None:
        sink = RedisSink(settings.redis_url, settings.redis_prefix)
        await sink.write([prediction(s, m, base + 3 * m) for m in range(20)
                          for s, base in (("BTCUSDT", 28_000.0), ("ETHUSDT", 1_800.0))])
        for b in range(30):  # 30 blocks forecast at h=1 and h=5; the last one is then reorged out
            await sink.write_fees(1, [fee(b, 1), fee(b, 5)], [], {})
        orphan = [fee(29, 1).model_copy(update={"retracted": True}), fee(29, 5).model_copy(update={"retracted": True})]
        await sink.write_fees(1, [], orphan, {"base_fee.h5": {"skill": 0.073, "mae": 0.05, "n": 25.0}})
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
    fees = snap["fees"]
    assert [p["block"] for p in fees["points"] if p["horizon"] == 5] == [18_640_000 + b for b in range(29)]
    assert fees["latest"]["retracted_block"] == str(18_640_029) and fees["score"]["base_fee.h5.skill"] == "0.073"


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
    assert re.search(r'id="fees"[^>]*data-points="58"', dom)  # 29 blocks x 2 horizons, the orphan left out
    assert "skill vs EIP-1559 7.3%" in dom
    shot = tmp_path / "page.png"
    subprocess.run([chromium, *flags, "--virtual-time-budget=5000", "--window-size=1200,900",
                    f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000

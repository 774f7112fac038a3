"""The HTTP API and the live page it serves: real Redis (written by the real sink), real uvicorn,
httpx for the curl-like checks, schemathesis against the OpenAPI spec, headless Chromium for the login."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from chaincast.deploy.api import bind, create_app, serve
from chaincast.deploy.embedded import wait_for_port
from chaincast.deploy.tokens import TokenStore
from chaincast.stream.records import FeePrediction, Prediction
from chaincast.stream.settings import Settings
from chaincast.stream.sink import RedisSink
from tests.conftest import start_persistent_redis
from tests.deploy.conftest import require

pytestmark = pytest.mark.one_broker  # the API reads Redis; the broker only carries the fixture's data

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars", "--lang=en-US"]
T0 = 1_680_307_200_000


def prediction(symbol: str, minute: int, price: float, horizon: int = 1) -> Prediction:
    return Prediction(exchange="binance", symbol=symbol, bar_ts=T0 + minute * 60_000, horizon=horizon,
                      y_hat=0.0004, q10=-0.002, q50=0.0004, q90=0.0021, price=price, price_hat=price * 1.0004,
                      model_name="forecaster", model_version="v-test", created_at=0, latency_ms=1.0)


def vol(symbol: str, minute: int, price: float) -> Prediction:
    return Prediction(exchange="binance", symbol=symbol, bar_ts=T0 + minute * 60_000, horizon=5, target="volatility",
                      y_hat=0.0007, q10=0.0004, q50=0.0007, q90=0.0011, price=price, model_name="forecaster-volatility-5",
                      model_version="vol-test", created_at=0, latency_ms=1.0)


def fee(block: int, horizon: int, block_hash: str = "") -> FeePrediction:
    base = 20.0 + 0.1 * block
    return FeePrediction(chain_id=1, block=18_640_000 + block, block_hash=block_hash or f"0x{block:064x}",
                         timestamp=1_700_000_000 + 12 * block, target="base_fee", horizon=horizon, y_hat=0.01,
                         q10=-0.05, q50=0.01, q90=0.06, base_fee_gwei=base, forecast_gwei=base * 1.01005,
                         forecast_q10_gwei=base * 0.95123, forecast_q90_gwei=base * 1.06184, reference=0.0,
                         model_name="fees.base_fee.h5", model_version="fee-v1", created_at=0)


class Server:
    def __init__(self, url: str, settings: object, store: TokenStore, token: str) -> None:
        self.url, self.settings, self.store, self.token = url, settings, store, token

    def get(self, path: str, token: str | None = "", **params: object) -> httpx.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {token or self.token}"}
        return httpx.get(self.url + path, headers=headers, params=params, timeout=30)


@contextlib.contextmanager
def serving(app: object) -> Iterator[str]:
    """The app served by uvicorn in a thread on a free port; its base URL once it listens."""
    sock, stop = bind("127.0.0.1", 0), threading.Event()
    thread = threading.Thread(target=serve, args=(app, sock, stop), daemon=True)
    thread.start()
    try:
        wait_for_port(sock.getsockname()[1], None, 60, "the API")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(15)


@pytest.fixture(scope="module")
def server(stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Twenty predictions per symbol in Redis, a model hash, a score hash, one token, the API serving them."""
    from chaincast.stream.records import ModelUpdate

    home = tmp_path_factory.mktemp("api-home")
    settings = Settings(**stack, CHAINCAST_HOME=str(home), CHAINCAST_REDIS_PREFIX="api:",
                        CHAINCAST_SYMBOLS="BTCUSDT,ETHUSDT", CHAINCAST_API_MAX_LIMIT="500",
                        CHAINCAST_API_RATE_PER_MIN="100000", CHAINCAST_FORECASTS="log_return:1,volatility:5")

    async def fill() -> None:
        sink = RedisSink(settings.redis_url, settings.redis_prefix, default_forecast=("log_return", 1))
        await sink.write([prediction(s, m, base + 3 * m) for m in range(20)
                          for s, base in (("BTCUSDT", 28_000.0), ("ETHUSDT", 1_800.0))])
        await sink.write([vol("BTCUSDT", m, 28_000.0 + 3 * m) for m in range(12)])  # BTC only: ETH's did not train
        await sink.write_scores("BTCUSDT", {"volatility:h5": {"version": "vol-test", "skill": "0.21",
                                                              "coverage_80": "0.79"}})
        await sink.write_model(ModelUpdate(name="forecaster", version="v-test", uri="file:///x", sha256="ab" * 32,
                                           family="linear", metrics={"val_mae": 0.001}, created_at=1))
        for b in range(30):  # 30 blocks forecast at h=1 and h=5; the last one is then reorged out
            await sink.write_fees(1, [fee(b, 1), fee(b, 5)], [], {})
        orphan = [fee(29, 1).model_copy(update={"retracted": True}), fee(29, 5).model_copy(update={"retracted": True})]
        await sink.write_fees(1, [], orphan, {"base_fee.h5": {"skill": 0.073, "mae": 0.05, "n": 25.0}})
        await sink.write_score("BTCUSDT", {"version": "v-test", "skill": "0.042", "mae": "0.0011"},
                               model_name="forecaster")
        await sink.close()

    asyncio.run(fill())
    store = TokenStore.in_home(home)
    token, _ = store.create("tester", ["read"])
    with serving(create_app(settings, live_interval_s=0.2)) as url:
        deadline = time.monotonic() + 60
        while True:  # serving, and Redis reachable through it
            try:
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API did not answer /healthz"
            time.sleep(0.1)
        yield Server(url, settings, store, token)


def test_no_token_bad_token_and_expired_token_get_401(server: Server) -> None:
    assert server.get("/v1/forecasts", token=None).status_code == 401
    assert server.get("/v1/forecasts", token="cc_not-a-token").status_code == 401
    expired, info = server.store.create("short", ["read"], ttl_s=0.001)
    time.sleep(0.01)
    resp = server.get("/v1/forecasts", token=expired)
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == "Bearer"


def test_revoked_token_is_refused_on_the_next_request(server: Server) -> None:
    token, _ = server.store.create("revokee", ["read"])
    assert server.get("/v1/models", token=token).status_code == 200
    server.store.revoke("revokee")
    assert server.get("/v1/models", token=token).status_code == 401


def test_latest_per_symbol_and_forecaster(server: Server) -> None:
    resp = server.get("/v1/forecasts")
    assert resp.status_code == 200
    latest = {(f["symbol"], f["forecaster"]): f for f in resp.json()["forecasts"]}
    assert set(latest) == {("BTCUSDT", "log_return:h1"), ("ETHUSDT", "log_return:h1"), ("BTCUSDT", "volatility:h5")}
    assert latest["BTCUSDT", "log_return:h1"]["price"] == 28_000.0 + 3 * 19
    assert latest["BTCUSDT", "log_return:h1"]["schema"] == 1
    volatility = latest["BTCUSDT", "volatility:h5"]
    assert volatility["target"] == "volatility" and volatility["price_hat"] is None and volatility["y_hat"] == 0.0007
    only = server.get("/v1/forecasts", forecaster="volatility:h5").json()["forecasts"]
    assert [(f["symbol"], f["forecaster"]) for f in only] == [("BTCUSDT", "volatility:h5")]


def test_history_of_one_forecaster_and_unknown_forecasters(server: Server) -> None:
    body = server.get("/v1/forecasts/BTCUSDT", forecaster="volatility:h5", limit=3).json()
    assert [f["forecaster"] for f in body["history"]] == ["volatility:h5"] * 3
    assert [f["bar_ts"] for f in body["history"]] == [T0 + m * 60_000 for m in (9, 10, 11)]
    assert [f["forecaster"] for f in body["latest"]] == ["volatility:h5"]
    default = server.get("/v1/forecasts/BTCUSDT", limit=3).json()
    assert {f["forecaster"] for f in default["history"]} == {"log_return:h1"}
    assert server.get("/v1/forecasts/BTCUSDT", forecaster="volatility:5").json()["history"]  # the settings' spelling
    for unknown in ("volatility:h15", "log_return:h5"):
        resp = server.get("/v1/forecasts/BTCUSDT", forecaster=unknown)
        assert resp.status_code == 404 and "served: log_return:h1, volatility:h5" in resp.json()["detail"]
        assert server.get("/v1/forecasts", forecaster=unknown).status_code == 404
    assert server.get("/v1/forecasts", forecaster="price").status_code == 422


def test_history_since_limit_and_bad_input(server: Server) -> None:
    body = server.get("/v1/forecasts/btcusdt", limit=5).json()
    assert [f["bar_ts"] for f in body["history"]] == [T0 + m * 60_000 for m in range(15, 20)]
    since = server.get("/v1/forecasts/BTCUSDT", since=T0 + 10 * 60_000, limit=3).json()["history"]
    assert [f["bar_ts"] for f in since] == [T0 + m * 60_000 for m in (10, 11, 12)]
    assert server.get("/v1/forecasts/DOGEUSDT").status_code == 404
    assert server.get("/v1/forecasts/BTCUSDT", limit=10**9).status_code == 422  # above CHAINCAST_API_MAX_LIMIT
    assert server.get("/v1/forecasts/BTCUSDT", limit=0).status_code == 422
    assert server.get("/v1/forecasts/BTCUSDT", since=-1).status_code == 422


def test_models(server: Server) -> None:
    models = server.get("/v1/models").json()["models"]
    assert [(m["name"], m["version"], m["family"]) for m in models] == [("forecaster", "v-test", "linear")]
    assert models[0]["metrics"] == {"val_mae": 0.001}


def test_rate_limit_per_token(server: Server) -> None:
    from chaincast.deploy.api import create_app

    settings = server.settings.model_copy(update={"api_rate_per_min": 3.0})
    app = create_app(settings, server.store)
    limited, _ = server.store.create("limited", ["read"])
    other, _ = server.store.create("other", ["read"])

    async def calls() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            codes = [(await client.get("/v1/models", headers={"Authorization": f"Bearer {limited}"})).status_code
                     for _ in range(6)]
            codes.append((await client.get("/v1/models", headers={"Authorization": f"Bearer {other}"})).status_code)
        return codes

    codes = asyncio.run(calls())
    assert codes[:3] == [200, 200, 200] and 429 in codes[3:6]
    assert codes[6] == 200  # another token has its own budget


def test_stream_sends_new_forecasts_and_refuses_bad_tokens(server: Server) -> None:
    ws_url = server.url.replace("http", "ws")

    async def run() -> tuple[dict, dict, dict]:
        async with connect(ws_url + "/v1/stream") as ws:
            await ws.send(json.dumps({"token": "cc_wrong"}))
            refused = json.loads(await ws.recv())
        async with connect(ws_url + "/v1/stream", additional_headers={"Authorization": f"Bearer {server.token}"}) as ws:
            hello = json.loads(await ws.recv())
            sink = RedisSink(server.settings.redis_url, server.settings.redis_prefix)
            await sink.write([prediction("ETHUSDT", 20, 1_900.0)])
            await sink.close()
            new = json.loads(await asyncio.wait_for(ws.recv(), 60))
        return refused, hello, new

    refused, hello, new = asyncio.run(run())
    assert refused["status"] == 401
    assert hello == {"ok": True, "token": "tester"}
    assert (new["symbol"], new["bar_ts"], new["forecaster"]) == ("ETHUSDT", T0 + 20 * 60_000, "log_return:h1")


def test_a_stream_whose_redis_stops_gets_a_close_it_can_read(tmp_path: Path) -> None:
    """Redis gone mid-stream: the socket closes with 4503 and a reason, not torn (no HTTP reply on a websocket)."""
    proc, port = start_persistent_redis(tmp_path / "redis")
    settings = Settings(CHAINCAST_HOME=str(tmp_path), REDIS_URL=f"redis://127.0.0.1:{port}/0",
                        CHAINCAST_SYMBOLS="BTCUSDT")
    store = TokenStore.in_home(tmp_path)
    token, _ = store.create("tester", ["read"])

    async def run(url: str) -> ConnectionClosed:
        async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            assert json.loads(await ws.recv())["ok"]
            await asyncio.sleep(0.5)  # the follow is waiting on Redis
            proc.stop()
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 60)
        return closed.value

    try:
        with serving(create_app(settings, store)) as url:
            closed = asyncio.run(run(url.replace("http", "ws") + "/v1/stream"))
    finally:
        proc.stop()
    assert closed.rcvd is not None, "the socket was torn, not closed"
    assert (closed.rcvd.code, closed.rcvd.reason) == (4503, "Redis unreachable")


def test_schemathesis_finds_no_server_errors(server: Server) -> None:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")

    failures = []
    for op in schema.get_all_operations():
        operation = op.ok()

        @hsettings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case) -> None:  # noqa: ANN001
            for headers in ({"Authorization": f"Bearer {server.token}"}, {}):
                response = case.call(headers=headers, timeout=30)
                if response.status_code >= 500:
                    failures.append((case.method, case.formatted_path, case.query, response.status_code))
                case.validate_response(response)

        check()
    assert not failures, failures


def live_dom(chromium: str, flags: list[str], profile: Path, url: str, ready: str,
             timeout_s: float = 60) -> tuple[str, str]:
    """The page's DOM and address once ``ready`` shows in it (or at ``timeout_s``), read over the DevTools protocol.

    ``--dump-dom`` cannot be used here: with ``--virtual-time-budget`` the virtual clock only waits for pending
    HTTP fetches, not for websocket messages, so Chromium dumps the DOM before the first ``/v1/live`` snapshot
    (which takes a real ~0.1 s to read from Redis) arrives. This polls the live DOM in real time instead."""
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "DevToolsActivePort").unlink(missing_ok=True)
    proc = subprocess.Popen([chromium, *flags, f"--user-data-dir={profile}", "--remote-debugging-port=0", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while not (port_file := profile / "DevToolsActivePort").exists() or not port_file.read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline, "Chromium did not open its DevTools port"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        while not (pages := [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
                             if t["type"] == "page"]):
            assert time.monotonic() < deadline, "Chromium opened no page"
            time.sleep(0.1)

        async def poll() -> tuple[str, str]:
            async with connect(pages[0]["webSocketDebuggerUrl"], max_size=None) as ws:
                ids = iter(range(1, 1_000_000))

                async def evaluate(expression: str) -> str:
                    await ws.send(json.dumps({"id": (i := next(ids)), "method": "Runtime.evaluate",
                                              "params": {"expression": expression, "returnByValue": True}}))
                    while (msg := json.loads(await ws.recv())).get("id") != i:
                        pass
                    return msg.get("result", {}).get("result", {}).get("value") or ""

                dom = ""
                while time.monotonic() < deadline:
                    dom = await evaluate("document.readyState === 'complete' ? document.documentElement.outerHTML : ''")
                    if ready in dom:
                        break
                    await asyncio.sleep(0.2)
                return dom, await evaluate("location.href")

        return asyncio.run(poll())
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_headless_chromium_logs_in_and_renders_live_data(server: Server, tmp_path: Path) -> None:
    chromium = require("chromium")

    def dom(url: str, ready: str) -> str:
        page, address = live_dom(chromium, CHROMIUM_FLAGS, tmp_path / "profile", url, ready)
        addresses.append(address)
        return page

    addresses: list[str] = []
    anonymous = dom(server.url + "/", "log in with an API token")

    assert re.search(r'<form id="login"(?! hidden)', anonymous) and 'id="card-BTCUSDT"' not in anonymous
    refused = dom(server.url + "/#token=cc_wrong", "valid bearer token")
    assert "a valid bearer token is required" in refused and 'id="card-BTCUSDT"' not in refused
    page = dom(server.url + f"/#token={server.token}", 'id="card-ETHUSDT"')
    status = re.findall(r'<div id="status">.*?</div>|<form.*?>', page)
    assert 'id="card-BTCUSDT"' in page and 'id="card-ETHUSDT"' in page, status
    assert re.search(r'id="card-BTCUSDT"[^>]*data-points="20"', page)
    assert "28,057.00" in page  # the last BTC close (28_000 + 3 * 19), as the page formats it
    assert "polyline" in page and "v-test" in page and "4.2%" in page
    assert re.search(r'id="fees"[^>]*data-points="58"', page)  # 29 blocks x 2 horizons, the orphan left out
    assert "skill vs EIP-1559 7.3%" in page
    assert re.search(r'id="vol-BTCUSDT-volatility-h5"[^>]*data-points="12"', page)  # the volatility card
    assert "0.0700%" in page and "0.0400% .. 0.1100%" in page and "vol-test" in page and "21.0%" in page
    assert 'id="vol-ETHUSDT-volatility-h5"' in page
    assert server.token not in page and server.token not in addresses[-1]  # the fragment left the address bar


def test_live_snapshots_after_login(server: Server) -> None:
    async def first() -> dict:
        async with connect(server.url.replace("http", "ws") + "/v1/live") as ws:
            await ws.send(json.dumps({"token": server.token}))
            return json.loads(await ws.recv())

    snap = asyncio.run(first())
    btc = snap["symbols"]["BTCUSDT"]
    assert len(btc["points"]) == 20
    assert [p["bar_ts"] for p in btc["points"]] == sorted(p["bar_ts"] for p in btc["points"])
    last = btc["points"][-1]
    assert last["lo"] < last["price"] < last["price_hat"] < last["hi"]
    assert btc["score"]["skill"] == "0.042"
    assert snap["symbols"]["ETHUSDT"]["score"] is None
    (v,) = btc["volatility"]
    assert v["forecaster"] == "volatility:h5" and v["score"]["coverage_80"] == "0.79" and len(v["points"]) == 12
    assert v["points"][0]["realised"] > 0 and v["points"][-1]["realised"] is None  # 5 bars not yet closed
    assert snap["symbols"]["ETHUSDT"]["volatility"] == [{"forecaster": "volatility:h5", "score": None, "points": []}]
    assert snap["model"]["version"] == "v-test"
    fees = snap["fees"]
    assert [p["block"] for p in fees["points"] if p["horizon"] == 5] == [18_640_000 + b for b in range(29)]
    assert fees["latest"]["retracted_block"] == str(18_640_029) and fees["score"]["base_fee.h5.skill"] == "0.073"


def test_python_api_client(server: Server) -> None:
    from chaincast.consumers.client import ApiClient, ApiError

    async def run() -> tuple:
        async with ApiClient(server.url, server.token) as api:
            latest, history, models = await api.latest(), await api.history("BTCUSDT", limit=3), await api.models()
            vols = await api.history("BTCUSDT", limit=4, forecaster="volatility:h5")
            assert [p.target for p in vols] == ["volatility"] * 4 and all(p.price_hat is None for p in vols)
            assert {p.target for p in await api.latest(forecaster="volatility:h5")} == {"volatility"}
        async with ApiClient(server.url, "cc_wrong") as bad:
            try:
                await bad.latest()
            except ApiError as exc:
                return latest, history, models, exc.status
        return latest, history, models, None

    latest, history, models, refused = asyncio.run(run())
    assert {p.symbol for p in latest} == {"BTCUSDT", "ETHUSDT"} and isinstance(latest[0], Prediction)
    assert [p.bar_ts for p in history] == sorted(p.bar_ts for p in history) and len(history) == 3
    assert models[0].version == "v-test"
    assert refused == 401

"""The HTTP API (FastAPI, OpenAPI at ``/openapi.json``) and the live page, behind bearer tokens.

- ``GET /v1/forecasts?forecaster=``: the latest forecast of every forecaster (or of one, e.g.
  ``volatility:h5``) of every symbol;
- ``GET /v1/forecasts/{symbol}?since=&limit=&forecaster=``: its latest forecasts and the history
  of one forecaster (the default one, the first of ``CHAINCAST_FORECASTS``, unless given);
- ``GET /v1/models``: the serving model versions with their metrics;
- ``WS /v1/stream``: new forecasts as they are written (JSON, one per message);
- ``WS /v1/live``: the live page's snapshots, one a second;
- ``GET /healthz``: Redis reachable (no token needed); ``GET /``: the live page (it asks for a token).

Every ``/v1`` call needs ``Authorization: Bearer <token>`` (``chaincast token create``);
websockets take the header, or (browsers cannot set it) the token as the first message
``{"token": "..."}``, so a token never sits in a URL or an access log. Each token has its
own rate limit (``CHAINCAST_API_RATE_PER_MIN``); beyond it the answer is 429.
"""

# No `from __future__ import annotations`: FastAPI resolves the route signatures, and `Auth` is local.
import asyncio
import contextlib
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator
from typing import Annotated

import uvicorn
from aiolimiter import AsyncLimiter
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chaincast.deploy.page import PAGE, snapshot
from chaincast.deploy.tokens import TokenInfo, TokenStore
from chaincast.stream.forecasts import ForecastReader, UnknownForecaster, forecaster_id
from chaincast.stream.records import ModelUpdate, Prediction
from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)

SYMBOL = r"^[A-Za-z0-9]{2,32}$"
FORECASTER = r"^[a-z_]{1,32}:h?[0-9]{1,4}$"
MAX_TS = 10**15  # ms: year 33658; keeps `since` inside what a Redis stream id can hold
WS_AUTH_TIMEOUT_S = 10.0
CLOSE_UNAUTHORIZED = 4401  # application close codes (4000-4999): 401 as a websocket close
CLOSE_UNAVAILABLE = 4503  # 503 as a websocket close: Redis stopped answering; reconnect later


class Forecast(Prediction):
    """A prediction as served: the record plus the stable id of the forecaster that made it."""

    forecaster: str = Field(description="target:h{horizon}, e.g. log_return:h1; stable across model versions")

    @classmethod
    def of(cls, p: Prediction) -> "Forecast":
        return cls(**p.model_dump(by_alias=True), forecaster=forecaster_id(p))


class Forecasts(BaseModel):
    forecasts: list[Forecast]


class SymbolForecasts(BaseModel):
    symbol: str
    latest: list[Forecast] = Field(description="the latest forecast of each forecaster of the symbol")
    history: list[Forecast] = Field(description="the forecaster's forecasts, oldest first; from `since` on if "
                                              "given, else the last `limit`")


class Models(BaseModel):
    models: list[ModelUpdate]


class Health(BaseModel):
    status: str
    redis: bool


class Problem(BaseModel):
    detail: str


ERRORS = {401: {"model": Problem, "description": "missing, unknown, revoked or expired token"},
          403: {"model": Problem, "description": "the token lacks the scope"},
          429: {"model": Problem, "description": "this token's rate limit is exhausted"},
          503: {"model": Problem, "description": "Redis unreachable"}}


class Gate:
    """Token check and per-token rate limit, shared by HTTP and websocket routes."""

    def __init__(self, store: TokenStore, rate_per_min: float) -> None:
        self.store = store
        self.rate_per_min = rate_per_min
        self._limiters: dict[str, AsyncLimiter] = {}

    def check(self, token: str | None, scope: str = "read") -> TokenInfo:
        info = self.store.verify(token) if token else None
        if info is None:
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        if scope not in info.scopes:
            raise HTTPException(403, f"the token lacks the {scope!r} scope")
        return info

    def still_valid(self, info: TokenInfo) -> bool:
        current = self.store.tokens().get(info.sha256)
        return current is not None and not current.expired()

    async def spend(self, info: TokenInfo) -> None:
        limiter = self._limiters.setdefault(info.sha256, AsyncLimiter(self.rate_per_min, 60))
        if not limiter.has_capacity():
            raise HTTPException(429, "rate limit exceeded", headers={"Retry-After": "1"})
        await limiter.acquire()


bearer = HTTPBearer(auto_error=False, description="a token from `chaincast token create`")


def create_app(settings: Settings, store: TokenStore | None = None, live_interval_s: float = 1.0,
               live_points: int = 120) -> FastAPI:
    reader = ForecastReader(settings)
    gate = Gate(store or TokenStore.in_home(settings.home), settings.api_rate_per_min)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await reader.close()

    app = FastAPI(title="chaincast", version="1", lifespan=lifespan,
                  description="Streaming crypto forecasts: latest, history, models, live stream.")

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _redis_down(_request: Request, exc: Exception) -> JSONResponse:
        log.warning("Redis unreachable: %s", exc)
        return JSONResponse({"detail": "Redis unreachable"}, status_code=503)

    async def authorized(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> TokenInfo:
        info = gate.check(creds.credentials if creds else None)
        await gate.spend(info)
        return info

    Auth = Annotated[TokenInfo, Depends(authorized)]

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz() -> JSONResponse:
        try:
            ok = await reader.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            ok = False
        return JSONResponse({"status": "ok" if ok else "degraded", "redis": ok}, status_code=200 if ok else 503)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(), headers={"Cache-Control": "no-store"})

    served = ", ".join(reader.forecasters)
    Forecaster = Annotated[str | None, Query(pattern=FORECASTER, description=(
        f"target:h{{horizon}}, one of the served forecasters ({served}); unset: every forecaster for the latest, "
        f"the default one ({reader.forecasters[0]}) for a history"))]
    NOT_SERVED = {404: {"model": Problem, "description": "unknown symbol or forecaster"}}

    def chosen(forecaster: str | None) -> str | None:
        try:
            return reader.resolve(forecaster)
        except UnknownForecaster as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get("/v1/forecasts", response_model=Forecasts, responses={**ERRORS, **NOT_SERVED})
    async def forecasts(_: Auth, forecaster: Forecaster = None) -> Forecasts:
        return Forecasts(forecasts=[Forecast.of(p) for p in await reader.latest(forecaster=chosen(forecaster))])

    @app.get("/v1/forecasts/{symbol}", response_model=SymbolForecasts, responses={**ERRORS, **NOT_SERVED})
    async def symbol_forecasts(
        _: Auth,
        symbol: Annotated[str, Path(pattern=SYMBOL, description="e.g. BTCUSDT (case-insensitive)")],
        since: Annotated[int | None, Query(ge=0, le=MAX_TS, description="bar open time, ms")] = None,
        limit: Annotated[int, Query(ge=1, le=settings.api_max_limit)] = 100,
        forecaster: Forecaster = None,
    ) -> SymbolForecasts:
        symbol = symbol.upper()
        forecaster = chosen(forecaster)
        if not await reader.known(symbol):
            raise HTTPException(404, f"unknown symbol {symbol}")
        latest = await reader.latest([symbol], forecaster=forecaster)
        history = await reader.history(symbol, since, limit, forecaster=forecaster)
        return SymbolForecasts(symbol=symbol, latest=[Forecast.of(p) for p in latest],
                               history=[Forecast.of(p) for p in history])

    @app.get("/v1/models", response_model=Models, responses=ERRORS)
    async def models(_: Auth) -> Models:
        return Models(models=await reader.models())

    async def ws_login(ws: WebSocket, hello: bool = True) -> TokenInfo | None:
        """The token from the Authorization header or the first message; None after closing."""
        await ws.accept()
        header = ws.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else None
        if token is None:
            try:
                first = json.loads(await asyncio.wait_for(ws.receive_text(), WS_AUTH_TIMEOUT_S))
                token = first.get("token") if isinstance(first, dict) else None
            except (TimeoutError, ValueError, WebSocketDisconnect):
                token = None
        try:
            info = gate.check(token if isinstance(token, str) else None)
            await gate.spend(info)
        except HTTPException as exc:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await ws.send_json({"error": exc.detail, "status": exc.status_code})
                await ws.close(CLOSE_UNAUTHORIZED, exc.detail)
            return None
        if hello:
            await ws.send_json({"ok": True, "token": info.name})
        return info

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        if (info := await ws_login(ws)) is None:
            return
        with contextlib.suppress(WebSocketDisconnect):
            try:
                async for p in reader.follow():
                    if not gate.still_valid(info):  # revoked or expired while streaming
                        await ws.close(CLOSE_UNAUTHORIZED, "token revoked or expired")
                        return
                    await ws.send_text(Forecast.of(p).model_dump_json(by_alias=True))
            except (RedisConnectionError, RedisTimeoutError) as exc:  # a close the client can read, not a torn socket
                log.warning("Redis unreachable, closing a stream: %s", exc)
                await ws.close(CLOSE_UNAVAILABLE, "Redis unreachable")

    @app.websocket("/v1/live")
    async def live(ws: WebSocket) -> None:
        if (info := await ws_login(ws, hello=False)) is None:  # the first snapshot says it worked
            return
        with contextlib.suppress(WebSocketDisconnect):
            while gate.still_valid(info):
                try:
                    snap = await snapshot(reader, live_points)
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    snap = {"error": f"Redis: {exc}"}
                await ws.send_json(snap)
                await asyncio.sleep(live_interval_s)
            await ws.close(CLOSE_UNAUTHORIZED, "token revoked or expired")

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 = a free one), so the caller knows the port before serving."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def serve(app: FastAPI, sock: socket.socket, should_exit: threading.Event | None = None) -> None:
    """Serve on ``sock`` until stopped (Ctrl-C, SIGTERM, or ``should_exit`` set from another thread)."""
    config = uvicorn.Config(app, log_level="warning", access_log=False, ws_ping_interval=20)
    server = uvicorn.Server(config)
    if should_exit is not None:
        def watch() -> None:
            should_exit.wait()
            server.should_exit = True

        threading.Thread(target=watch, daemon=True).start()
    server.run(sockets=[sock])

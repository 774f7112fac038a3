"""`chaincast page`: a small live web page of the forecasts, read from Redis.

One ``websockets`` server does both jobs: plain HTTP GET of ``/`` returns the
page (via ``process_request``), and the page's websocket on ``/ws`` receives a
snapshot every second: per symbol the last ``points`` predictions from the
history stream, the live score hash when the score agent has written one, and
the serving model's hash (keys from ``stream.redis_layout``); and for the chain
``CHAINCAST_FEE_CHAIN_ID`` the latest fee forecasts, their live scores and the recent
base-fee forecasts from the fee history (retracted ones left out). The page draws price,
forecast and its q10..q90 band as SVG, and the base fee with its forecast band h blocks
ahead; it needs nothing from the internet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Annotated

import redis.asyncio as aioredis
import typer
from redis.exceptions import ConnectionError as RedisConnectionError
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from chaincast.models.timeunits import MINUTE_MS
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)

PAGE = Path(__file__).parent / "page.html"  # read per request: edits show on reload


@dataclass(frozen=True)
class Point:
    bar_ts: int  # ms, open of the bar the forecast saw
    target_ts: int  # ms, the bar the forecast is for
    price: float
    price_hat: float
    lo: float  # price * exp(q10)
    hi: float  # price * exp(q90)
    version: str


def point(fields: dict[str, str]) -> Point | None:
    """One history entry as chart coordinates; None if it lacks a field (an older schema).

    >>> p = point({"bar_ts": "60000", "horizon": "1", "price": "100", "price_hat": "101",
    ...            "q10": "-0.01", "q90": "0.02", "model_version": "abc"})
    >>> (p.target_ts, round(p.lo, 3), round(p.hi, 3))
    (120000, 99.005, 102.02)
    """
    try:
        price = float(fields["price"])
        bar_ts, horizon = int(fields["bar_ts"]), int(fields["horizon"])
        return Point(bar_ts, bar_ts + MINUTE_MS * horizon, price, float(fields["price_hat"]),
                     price * math.exp(float(fields["q10"])), price * math.exp(float(fields["q90"])),
                     fields.get("model_version", ""))
    except (KeyError, ValueError):
        return None


class Snapshots:
    """Reads what the page shows from Redis; one lazy client, closed on shutdown."""

    def __init__(self, settings: Settings, points: int) -> None:
        self.settings = settings
        self.points = points
        self._client: aioredis.Redis | None = None

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(self.settings.redis_url, decode_responses=True)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def read(self) -> dict:
        keys, pipe = RedisLayout.of(self.settings), self.client.pipeline(transaction=False)
        for sym in self.settings.symbols:
            pipe.xrevrange(keys.history(sym), count=self.points)
            pipe.hgetall(keys.score(sym))
        pipe.hgetall(keys.model(self.settings.model_name))
        chain = self.settings.fee_chain_id
        pipe.hgetall(keys.fee_latest(chain))
        pipe.hgetall(keys.fee_score(chain))
        # every forecast is (targets x horizons) entries: read enough for `points` blocks of each
        per_block = 2 * len(self.settings.fee_horizons)
        pipe.xrevrange(keys.fee_history(chain), count=self.points * per_block)
        replies = await pipe.execute()
        model = replies[-4]
        fee_latest, fee_score, fee_history = replies[-3:]
        fees = {"chain_id": chain, "latest": fee_latest or None, "score": fee_score or None,
                "points": [p.__dict__ for p in fee_points([f for _, f in reversed(fee_history)])]}
        symbols = {}
        for i, sym in enumerate(self.settings.symbols):
            history, score = replies[2 * i], replies[2 * i + 1]
            points = [p for _, fields in reversed(history) if (p := point(fields)) is not None]
            symbols[sym] = {"points": [p.__dict__ for p in points], "score": score or None}
        return {"model": {"name": self.settings.model_name, **model}, "symbols": symbols, "fees": fees}


@dataclass(frozen=True)
class FeePoint:
    block: int  # the block the forecast saw
    target_block: int  # block + horizon
    horizon: int
    base_fee: float  # gwei, of ``block``
    forecast: float  # gwei
    lo: float
    hi: float


def fee_points(entries: list[dict[str, str]]) -> list[FeePoint]:
    """Base-fee forecasts of the history stream, oldest first, without the retracted ones.

    >>> e = {"target": "base_fee", "block": "10", "horizon": "5", "block_hash": "0xa", "base_fee_gwei": "20.0",
    ...      "forecast_gwei": "21.0", "forecast_q10_gwei": "19.0", "forecast_q90_gwei": "23.0", "retracted": "False"}
    >>> [p.target_block for p in fee_points([e, {**e, "block": "11"}, {**e, "block": "11", "retracted": "True"}])]
    [15]
    """
    withdrawn = {(e.get("block"), e.get("block_hash")) for e in entries if e.get("retracted") == "True"}
    out = []
    for e in entries:
        if e.get("target") != "base_fee" or e.get("retracted") == "True" or (e.get("block"), e.get("block_hash")) \
                in withdrawn:
            continue
        try:
            block, horizon = int(e["block"]), int(e["horizon"])
            out.append(FeePoint(block, block + horizon, horizon, float(e["base_fee_gwei"]), float(e["forecast_gwei"]),
                                float(e["forecast_q10_gwei"]), float(e["forecast_q90_gwei"])))
        except (KeyError, ValueError):
            continue  # an entry of another schema
    return out


def html_response(body: bytes, content_type: str = "text/html; charset=utf-8",
                  status: HTTPStatus = HTTPStatus.OK) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, body)


async def serve_page(settings: Settings, host: str, port: int, points: int = 120, interval: float = 1.0,
                     stopping: asyncio.Event | None = None,
                     on_ready: Callable[[int], None] | None = None) -> None:
    """Serve until ``stopping`` is set (or forever)."""
    snapshots = Snapshots(settings, points)

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/ws":
            return None  # the websocket handshake goes on
        if request.path in ("/", "/index.html"):
            return html_response(PAGE.read_bytes())
        if request.path == "/healthz":
            return html_response(b"ok\n", "text/plain")
        return html_response(b"not found\n", "text/plain", HTTPStatus.NOT_FOUND)

    async def push(ws: ServerConnection) -> None:
        try:
            while True:
                try:
                    snap = await snapshots.read()
                except RedisConnectionError as exc:
                    snap = {"error": f"Redis: {exc}"}
                await ws.send(json.dumps(snap))
                await asyncio.sleep(interval)
        except ConnectionClosed:
            pass

    try:
        async with serve(push, host, port, process_request=process_request) as server:
            bound = server.sockets[0].getsockname()[1]
            log.info("live page on http://%s:%d/", host, bound)
            if on_ready is not None:
                on_ready(bound)
            await (stopping.wait() if stopping is not None else asyncio.Future())
    finally:
        await snapshots.close()


def page_command(
    port: Annotated[int, typer.Option(help="HTTP port (0 = a free one).", min=0, max=65535)] = 9480,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    points: Annotated[int, typer.Option(help="Predictions per chart.", min=2)] = 120,
) -> None:
    """Serve the live page of price, forecast band, model version and live skill (reads Redis)."""
    from chaincast.deploy.cli_args import load_settings

    settings = load_settings()
    if not settings.redis_url:
        raise typer.BadParameter("set REDIS_URL to the Redis that chaincast writes to")

    def ready(bound: int) -> None:
        typer.echo(f"live page on http://{host}:{bound}/")

    try:
        asyncio.run(serve_page(settings, host, port, points, on_ready=ready))
    except KeyboardInterrupt:
        pass

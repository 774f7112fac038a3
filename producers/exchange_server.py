"""A local exchange that speaks Binance's wire format, replaying real 1-minute history.

Websocket paths as on Binance: ``/stream?streams=btcusdt@trade/ethusdt@kline_1m``
(every frame wrapped as ``{"stream": ..., "data": ...}``) and ``/ws/<name>`` (raw
payloads), with live ``SUBSCRIBE`` / ``UNSUBSCRIBE`` / ``LIST_SUBSCRIPTIONS``.
Streams: ``<symbol>@trade``, ``<symbol>@aggTrade`` and ``<symbol>@kline_1m``.
REST for backfill: ``/api/v3/aggTrades`` (``fromId`` / ``startTime`` /
``endTime`` / ``limit``), ``/api/v3/klines`` (1m) and ``/api/v3/ping``.

Each bar becomes the four trades of ``producers.synth.bar_trades`` (so the ids
are deterministic and a restarted server replays identical trades); every
trade is its own aggregate (``a = f = l = trade id``). Klines are pushed twice
a minute per symbol: an update after the open trade and the closed kline
(``x=true``) after the close trade, both built from those same trades.

Market time runs at ``speed`` market seconds per wall second from ``start``
(default: the first bar), and keeps running with nobody connected, as a real
market does; REST serves only what has already traded. ``speed=None`` ("max")
sends as fast as the clients read and pauses while no one is connected, so a
replay is not spent before the producer arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import orjson
import websockets
from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from chaincast.models.history import TS, load_many, symbol_of
from chaincast.models.timeunits import MINUTE_MS
from chaincast.producers.synth import TRADES_PER_BAR, bar_trades
from chaincast.stream.records import Trade

log = logging.getLogger(__name__)

STREAM_RE = re.compile(r"^([a-z0-9]+)@(trade|aggTrade|kline_1m)$")
MAX_LIMIT = 1000
YIELD_EVERY = 64  # at max speed, let other tasks (REST, new clients, the producer in tests) run


def decimal_text(x: float) -> str:
    """A float as Binance writes decimals: positional, and exact enough to round-trip.

    >>> decimal_text(20000.0), decimal_text(1e-12), decimal_text(0.1)
    ('20000.0', '0.000000000001', '0.1')
    """
    text = repr(x)
    return format(Decimal(text), "f") if "e" in text else text


def trade_payload(t: Trade, kind: str) -> str:
    m = "true" if t.side == "sell" else "false"  # m: the buyer was the maker, i.e. the taker sold
    p, q = decimal_text(t.price), decimal_text(t.qty)
    if kind == "aggTrade":
        return (f'{{"e":"aggTrade","E":{t.ts_event},"s":"{t.symbol}","a":{t.trade_id},"p":"{p}","q":"{q}",'
                f'"f":{t.trade_id},"l":{t.trade_id},"T":{t.ts_event},"m":{m},"M":true}}')
    return (f'{{"e":"trade","E":{t.ts_event},"s":"{t.symbol}","t":{t.trade_id},"p":"{p}","q":"{q}",'
            f'"T":{t.ts_event},"m":{m},"M":true}}')


def kline_fields(bar_ts: int, trades: list[Trade]) -> dict:
    """The ``k`` object of a kline built from a bar's trades so far."""
    prices = [t.price for t in trades]
    return {
        "t": bar_ts, "T": bar_ts + MINUTE_MS - 1, "s": trades[0].symbol, "i": "1m",
        "f": trades[0].trade_id, "L": trades[-1].trade_id,
        "o": decimal_text(prices[0]), "c": decimal_text(prices[-1]),
        "h": decimal_text(max(prices)), "l": decimal_text(min(prices)),
        "v": decimal_text(sum(t.qty for t in trades)), "n": len(trades),
        "x": len(trades) == TRADES_PER_BAR,
        "q": decimal_text(sum(t.price * t.qty for t in trades)),
        "V": decimal_text(sum(t.qty for t in trades if t.side == "buy")),
        "Q": decimal_text(sum(t.price * t.qty for t in trades if t.side == "buy")),
        "B": "0",
    }


def kline_row(k: dict) -> list:
    """A kline as a ``/api/v3/klines`` row (the 12-column layout)."""
    return [k["t"], k["o"], k["h"], k["l"], k["c"], k["v"], k["T"], k["q"], k["n"], k["V"], k["Q"], "0"]


@dataclass
class Market:
    """One symbol's history and how much of it has traded."""

    symbol: str  # upper case, as in payloads
    bars: np.ndarray
    released_id: int = -1  # the last trade id that has happened; REST serves up to here

    def __post_init__(self) -> None:
        self.first_ids = (self.bars[:, TS].astype(np.int64) // MINUTE_MS) * TRADES_PER_BAR

    def trades_of(self, index: int) -> list[Trade]:
        return bar_trades("binance", self.symbol, self.bars[index])

    def trades_from(self, index: int) -> Iterator[Trade]:
        for i in range(index, len(self.bars)):
            yield from self.trades_of(i)


class ExchangeError(ValueError):
    """A REST request the exchange refuses (HTTP 400, Binance error body)."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code


class LocalExchange:
    def __init__(self, markets: dict[str, np.ndarray], *, speed: float | None = None, start_ms: int | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        if not markets:
            raise ValueError("no market data to replay")
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive (or None for max)")
        self.markets = {s.upper(): Market(s.upper(), bars) for s, bars in markets.items()}
        self.speed = speed
        self.start_ms = start_ms if start_ms is not None else min(int(b[0, TS]) for b in markets.values())
        self.host, self.port = host, port
        self.sent = 0  # trades sent to at least one client
        self.finished = asyncio.Event()
        self._subs: dict[str, dict[ServerConnection, bool]] = {}  # stream name -> {connection: combined?}
        self._clients: set[ServerConnection] = set()
        self._has_clients = asyncio.Event()
        self._server: Server | None = None
        self._replay: asyncio.Task | None = None
        for market in self.markets.values():  # what traded before the start is history, served over REST
            before = int(np.searchsorted(market.bars[:, TS], self.start_ms))
            market.released_id = int(market.first_ids[before - 1]) + TRADES_PER_BAR - 1 if before else -1

    @classmethod
    def from_files(cls, paths: list[str | Path], **kwargs) -> "LocalExchange":
        by_symbol: dict[str, list[str | Path]] = {}
        for path in paths:
            symbol = symbol_of(path)
            if symbol is None:
                raise ValueError(f"cannot tell the symbol of {path}; name it like BTCUSDT-1m-2022-09-05.csv.gz")
            by_symbol.setdefault(symbol, []).append(path)
        return cls({s: load_many(p) for s, p in by_symbol.items()}, **kwargs)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> "LocalExchange":
        self._server = await websockets.serve(
            self._session, self.host, self.port, process_request=self._http, compression=None,
            max_size=1 << 16, ping_interval=20, ping_timeout=60)
        self.port = self._server.sockets[0].getsockname()[1]
        self._replay = asyncio.create_task(self._run_replay())
        log.info("local exchange on %s replaying %s from %d at speed %s", self.url, sorted(self.markets),
                 self.start_ms, self.speed or "max")
        return self

    async def stop(self) -> None:
        """Stop replaying and drop every connection, as an exchange going down would."""
        if self._replay is not None:
            self._replay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> "LocalExchange":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- replay -------------------------------------------------------------------------------

    def _events(self) -> Iterator[tuple[int, str, int, Trade]]:
        """Every trade of every market from the start, in event-time order: (ts, symbol, position in bar, trade)."""
        def market_events(market: Market) -> Iterator[tuple[int, str, int, Trade]]:
            index = int(np.searchsorted(market.bars[:, TS], self.start_ms))
            for i in range(index, len(market.bars)):
                for j, t in enumerate(market.trades_of(i)):
                    yield t.ts_event, market.symbol, j, t
        return heapq.merge(*(market_events(m) for m in self.markets.values()), key=lambda e: (e[0], e[1]))

    async def _run_replay(self) -> None:
        wall0 = time.monotonic()
        open_bars: dict[str, list[Trade]] = {}  # each symbol's trades of the current minute
        for n, (ts, symbol, j, trade) in enumerate(self._events()):
            if self.speed is None:
                await self._has_clients.wait()
                if n % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            else:
                ahead = wall0 + (ts - self.start_ms) / 1000 / self.speed - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            market = self.markets[symbol]
            market.released_id = trade.trade_id
            low = symbol.lower()
            sent = await self._publish(f"{low}@trade", lambda: trade_payload(trade, "trade"))
            sent |= await self._publish(f"{low}@aggTrade", lambda: trade_payload(trade, "aggTrade"))
            self.sent += sent
            bar = open_bars[symbol] = [trade] if j == 0 else [*open_bars.get(symbol, ()), trade]
            if j in (0, TRADES_PER_BAR - 1):
                k = kline_fields(trade.ts_event - trade.ts_event % MINUTE_MS, bar)
                await self._publish(f"{low}@kline_1m", lambda: orjson.dumps(
                    {"e": "kline", "E": trade.ts_event, "s": symbol, "k": k}).decode())
        log.info("replay finished: %d trades sent", self.sent)
        self.finished.set()

    async def _publish(self, stream: str, payload) -> bool:
        subscribers = self._subs.get(stream)
        if not subscribers:
            return False
        raw = payload()
        wrapped = f'{{"stream":"{stream}","data":{raw}}}'
        for ws, combined in list(subscribers.items()):
            try:
                await ws.send(wrapped if combined else raw)
            except ConnectionClosed:
                self._drop(ws)
        return True

    # --- websocket sessions -------------------------------------------------------------------

    def _subscribe(self, ws: ServerConnection, names: list[str], combined: bool) -> None:
        for name in names:
            self._subs.setdefault(name, {})[ws] = combined

    def _drop(self, ws: ServerConnection) -> None:
        self._clients.discard(ws)
        for subs in self._subs.values():
            subs.pop(ws, None)
        if not self._clients:
            self._has_clients.clear()

    async def _session(self, ws: ServerConnection) -> None:
        names, combined = parse_path(ws.request.path)
        self._subscribe(ws, names, combined)
        self._clients.add(ws)
        self._has_clients.set()
        try:
            async for message in ws:
                reply = self._control(ws, message, combined)
                if reply is not None:
                    await ws.send(reply)
        except ConnectionClosed:
            pass
        finally:
            self._drop(ws)

    def _control(self, ws: ServerConnection, message: str | bytes, combined: bool) -> str | None:
        """Live SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS, answered as Binance does."""
        try:
            request = orjson.loads(message)
            method, rid = request["method"], request.get("id")
            params = request.get("params", [])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return orjson.dumps({"error": {"code": 3, "msg": "Invalid JSON"}}).decode()
        if method == "LIST_SUBSCRIPTIONS":
            return orjson.dumps({"result": sorted(n for n, s in self._subs.items() if ws in s), "id": rid}).decode()
        if method in ("SUBSCRIBE", "UNSUBSCRIBE") and isinstance(params, list) and all(
                isinstance(p, str) and STREAM_RE.match(p) for p in params):
            if method == "SUBSCRIBE":
                self._subscribe(ws, params, combined)
            else:
                for name in params:
                    self._subs.get(name, {}).pop(ws, None)
            return orjson.dumps({"result": None, "id": rid}).decode()
        return orjson.dumps({"error": {"code": 2, "msg": f"Invalid request: {method!r}"}, "id": rid}).decode()

    # --- REST ---------------------------------------------------------------------------------

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path.startswith(("/ws/", "/stream")):
            try:
                parse_path(request.path)
            except ValueError as exc:
                return connection.respond(HTTPStatus.BAD_REQUEST, str(exc))
            return None  # go on with the websocket handshake
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            if parts.path == "/api/v3/ping":
                body: object = {}
            elif parts.path == "/api/v3/time":
                body = {"serverTime": time.time_ns() // 1_000_000}
            elif parts.path == "/api/v3/aggTrades":
                body = self.agg_trades(query)
            elif parts.path == "/api/v3/klines":
                body = self.klines(query)
            else:
                return connection.respond(HTTPStatus.NOT_FOUND, "Not found")
        except ExchangeError as exc:
            return _json(connection, HTTPStatus.BAD_REQUEST, {"code": exc.code, "msg": str(exc)})
        return _json(connection, HTTPStatus.OK, body)

    def _market(self, query: dict[str, str]) -> Market:
        if "symbol" not in query:
            raise ExchangeError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        market = self.markets.get(query["symbol"].upper())
        if market is None:
            raise ExchangeError(-1121, "Invalid symbol.")
        return market

    def agg_trades(self, query: dict[str, str]) -> list[dict]:
        market = self._market(query)
        limit = min(_int_param(query, "limit", 500), MAX_LIMIT)
        from_id = _int_param(query, "fromId", -1)
        start, end = _int_param(query, "startTime", -1), _int_param(query, "endTime", -1)
        if from_id >= 0:
            index = int(np.searchsorted(market.first_ids, from_id - from_id % TRADES_PER_BAR))
        elif start >= 0:
            index = int(np.searchsorted(market.bars[:, TS], start - MINUTE_MS + 1))
        else:  # Binance: the most recent trades
            released = int(np.searchsorted(market.first_ids, market.released_id, side="right"))
            index = max(0, released - -(-limit // TRADES_PER_BAR))
        rows: list[dict] = []
        for t in market.trades_from(index):
            if t.trade_id > market.released_id or (end >= 0 and t.ts_event > end) or len(rows) >= limit:
                break
            if t.trade_id >= from_id and t.ts_event >= start:
                rows.append({"a": t.trade_id, "p": decimal_text(t.price), "q": decimal_text(t.qty),
                             "f": t.trade_id, "l": t.trade_id, "T": t.ts_event, "m": t.side == "sell", "M": True})
        return rows

    def klines(self, query: dict[str, str]) -> list[list]:
        market = self._market(query)
        if query.get("interval") != "1m":
            raise ExchangeError(-1120, "Invalid interval; this exchange serves 1m.")
        limit = min(_int_param(query, "limit", 500), MAX_LIMIT)
        start, end = _int_param(query, "startTime", 0), _int_param(query, "endTime", -1)
        rows = []
        for i in range(int(np.searchsorted(market.bars[:, TS], start)), len(market.bars)):
            if len(rows) >= limit or market.first_ids[i] > market.released_id or (
                    end >= 0 and market.bars[i, TS] > end):
                break
            trades = [t for t in market.trades_of(i) if t.trade_id <= market.released_id]
            rows.append(kline_row(kline_fields(int(market.bars[i, TS]), trades)))
        return rows


def _int_param(query: dict[str, str], name: str, default: int) -> int:
    if name not in query:
        return default
    try:
        return int(query[name])
    except ValueError:
        raise ExchangeError(-1100, f"Illegal characters found in parameter '{name}'.") from None


def _json(connection: ServerConnection, status: HTTPStatus, body: object) -> Response:
    response = connection.respond(status, "")
    response.body = orjson.dumps(body)
    del response.headers["Content-Type"], response.headers["Content-Length"]
    response.headers["Content-Type"] = "application/json;charset=UTF-8"
    response.headers["Content-Length"] = str(len(response.body))
    return response


def parse_path(path: str) -> tuple[list[str], bool]:
    """Stream names and whether frames are wrapped (combined) for a websocket path.

    >>> parse_path("/stream?streams=btcusdt@trade/ethusdt@kline_1m")
    (['btcusdt@trade', 'ethusdt@kline_1m'], True)
    >>> parse_path("/ws/btcusdt@aggTrade")
    (['btcusdt@aggTrade'], False)
    """
    parts = urlsplit(path)
    if parts.path.startswith("/ws"):
        names, combined = [n for n in parts.path[len("/ws"):].split("/") if n], False
    elif parts.path.rstrip("/") == "/stream":
        names, combined = [n for n in parse_qs(parts.query).get("streams", [""])[-1].split("/") if n], True
    else:
        raise ValueError(f"unknown path {parts.path!r}")
    bad = [n for n in names if not STREAM_RE.match(n)]
    if bad:
        raise ValueError(f"Invalid stream name(s): {', '.join(bad)[:200]}")
    return names, combined


async def serve_exchange(paths: list[str | Path], host: str = "127.0.0.1", port: int = 9443,
                         speed: float | None = 60.0, start_ms: int | None = None,
                         stop: asyncio.Event | None = None,
                         started: Callable[[LocalExchange], None] | None = None) -> LocalExchange:
    """Run a local exchange over ``paths`` until ``stop`` is set (or the task is cancelled).

    ``started`` is called once it listens (with ``port=0`` that is how to learn the port).
    """
    exchange = LocalExchange.from_files(paths, speed=speed, start_ms=start_ms, host=host, port=port)
    async with exchange:
        if started is not None:
            started(exchange)
        await (stop or asyncio.Event()).wait()
    return exchange

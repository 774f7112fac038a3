"""A local CoinGecko-style price API replaying real 1-minute history, with scripted faults.

``GET /simple/price?ids=..&vs_currencies=..&include_last_updated_at=true&include_24hr_vol=true``
answers the close of the next replayed minute for each coin (every call advances the market by
one minute, so a test controls time by polling); ``GET /coins/{id}/market_chart?vs_currency=..
&days=1`` answers the day before the current minute (``prices`` and ``total_volumes``). A quote's
``last_updated_at`` is 59 s into its minute, so the bar it becomes is that minute's bar.

``faults`` maps a request number (1-based, over all paths) to what goes wrong instead:
``429`` (with ``Retry-After``), ``500``, ``truncated`` (cut JSON), ``nan`` (a price "NaN"),
``negative`` (a price below zero), ``missing`` (one coin left out), ``wrong_type`` (a list).
Served with ``websockets``' HTTP hook, like the local exchange.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import numpy as np
import orjson
import websockets
from websockets.asyncio.server import Server, ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from chaincast.models.history import CLOSE, MINUTE_MS, TS, VOLUME
from chaincast.producers.aggregator import DAY_MINUTES, vs_currency

log = logging.getLogger(__name__)

QUOTE_OFFSET_MS = 59_000  # a quote's time inside its minute
CHART = re.compile(r"^/coins/([a-z0-9-]+)/market_chart$")


def respond(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> Response:
    h = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                 *(headers or {}).items()])
    return Response(status, HTTPStatus(status).phrase, h, body)


@dataclass
class FakeAggregator:
    bars: dict[str, np.ndarray]  # symbol -> bars (models.history columns)
    ids: dict[str, str]  # symbol -> coin id
    start: int = DAY_MINUTES  # index of the first minute /simple/price serves
    faults: dict[int, str] = field(default_factory=dict)
    retry_after_s: int = 1
    host: str = "127.0.0.1"
    port: int = 0
    requests: int = 0
    served: dict[str, int] = field(default_factory=dict)  # outcome -> count
    api_keys: set[str] = field(default_factory=set)  # header values seen (the test checks the key arrived)
    _server: Server | None = None

    def __post_init__(self) -> None:
        self.clock = self.start
        self.coins = {coin: sym for sym, coin in self.ids.items()}
        self.volume_24h = {}
        for sym, b in self.bars.items():  # rolling 24 h quote volume, as aggregators report it
            quote = np.cumsum(b[:, VOLUME] * b[:, CLOSE])
            self.volume_24h[sym] = quote - np.concatenate([np.zeros(DAY_MINUTES), quote[:-DAY_MINUTES]])[:len(quote)]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start_serving(self) -> FakeAggregator:
        self._server = await websockets.serve(self._refuse_ws, self.host, self.port, process_request=self._http)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _refuse_ws(self, ws: ServerConnection) -> None:
        await ws.close()

    def quote_ms(self, sym: str, i: int) -> int:
        return int(self.bars[sym][i, TS]) + QUOTE_OFFSET_MS

    def _http(self, connection: ServerConnection, request: Request) -> Response:
        self.requests += 1
        for name in ("x-cg-demo-api-key", "x-cg-pro-api-key"):
            if (key := request.headers.get(name)) is not None:
                self.api_keys.add(key)
        fault = self.faults.get(self.requests)
        if fault in ("429", "500"):
            self.served[fault] = self.served.get(fault, 0) + 1
            headers = {"Retry-After": str(self.retry_after_s)} if fault == "429" else {}
            return respond(int(fault), b'{"status": {"error_code": %s}}' % fault.encode(), headers)
        url = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/simple/price":
            body = self._simple_price(query, fault)
        elif (m := CHART.match(url.path)) and m.group(1) in self.coins:
            body = self._market_chart(self.coins[m.group(1)], fault)
        else:
            return respond(404, b'{"error": "not found"}')
        self.served[fault or "ok"] = self.served.get(fault or "ok", 0) + 1
        return respond(200, body)

    def _simple_price(self, query: dict[str, str], fault: str | None) -> bytes:
        i = self.clock
        self.clock += 1
        out: dict[str, dict] = {}
        for coin in query.get("ids", "").split(","):
            sym = self.coins.get(coin)
            if sym is None or i >= len(self.bars[sym]):
                continue
            vs = vs_currency(sym)
            out[coin] = {vs: float(self.bars[sym][i, CLOSE]), f"{vs}_24h_vol": float(self.volume_24h[sym][i]),
                         "last_updated_at": self.quote_ms(sym, i) // 1000}
        return self._spoil(out, fault)

    def _market_chart(self, sym: str, fault: str | None) -> bytes:
        lo = max(self.clock - DAY_MINUTES, 0)
        rows = range(lo, min(self.clock, len(self.bars[sym])))
        out = {"prices": [[self.quote_ms(sym, i), float(self.bars[sym][i, CLOSE])] for i in rows],
               "market_caps": [],
               "total_volumes": [[self.quote_ms(sym, i), float(self.volume_24h[sym][i])] for i in rows]}
        return self._spoil(out, fault)

    @staticmethod
    def _spoil(out: dict, fault: str | None) -> bytes:
        body = orjson.dumps(out)
        if fault == "truncated":
            return body[: len(body) // 2]
        if fault == "wrong_type":
            return orjson.dumps(list(out))
        first = next(iter(out), None)
        if first is None or fault is None:
            return body
        entry = out[first]
        if fault == "missing":
            del out[first]
        elif "prices" in out and fault in ("nan", "negative"):
            out["prices"][-1][1] = "NaN" if fault == "nan" else -1.0
        elif fault in ("nan", "negative"):
            vs = next(k for k in entry if not k.endswith(("_vol", "_at")))
            entry[vs] = "NaN" if fault == "nan" else -entry[vs]
        return orjson.dumps(out)

"""Binance spot wire format → records. Pure functions, no I/O.

Covers what the producer subscribes to: ``trade``, ``aggTrade`` and ``kline``
payloads, raw (``/ws/<name>``) or in the combined-stream wrapper
``{"stream": ..., "data": ...}``, plus the REST ``/api/v3/aggTrades`` rows used
for backfill. Field meanings follow ``binance_web-socket-streams.md``: ``m`` is
"the buyer is the market maker", so the taker sold when it is true.

Anything else raises ``BadMessage`` with a reason kind (``json``, ``event``,
``field``, ``value``, ``symbol``, ``size``) the producer dead-letters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import orjson

from chaincast.stream.records import Bar, Trade

VENUE = "binance"
TRADE_STREAMS = ("trade", "aggTrade")
KLINE_INTERVALS = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M")
AGG_TRADES_PATH = "/api/v3/aggTrades"
KLINES_PATH = "/api/v3/klines"
REST_LIMIT = 1000  # the most /api/v3/aggTrades returns per call


class BadMessage(ValueError):
    """A frame the producer refuses; ``reason`` is ``"<kind>: <detail>"``."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind

    @property
    def reason(self) -> str:
        return str(self)


@dataclass(frozen=True, slots=True)
class Kline:
    """A kline update; only ``closed`` ones (``x=true``) are final."""

    bar: Bar
    closed: bool


@dataclass(frozen=True, slots=True)
class Control:
    """A frame that carries no market data: a subscription reply, a shutdown notice."""

    kind: Literal["ack", "shutdown"]


Event = Trade | Kline | Control


def decode(raw: str | bytes, max_bytes: int) -> Any:
    """JSON of one frame, refusing oversized frames before parsing them."""
    size = len(raw)  # chars for str frames: close enough for a guard, exact for bytes
    if size > max_bytes:
        raise BadMessage("size", f"{size} bytes > {max_bytes}")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadMessage("json", str(exc)[:120]) from None


def require(data: Mapping[str, Any], key: str) -> Any:
    try:
        return data[key]
    except KeyError:
        raise BadMessage("field", f"missing {key!r}") from None


def require_int(data: Mapping[str, Any], key: str) -> int:
    value = require(data, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadMessage("field", f"{key!r} is not a non-negative integer: {value!r}"[:160])
    return value


def require_positive(data: Mapping[str, Any], key: str, *, allow_zero: bool = False) -> float:
    value = require(data, key)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadMessage("field", f"{key!r} is not a decimal: {value!r}"[:160])
    try:
        number = float(value)
    except ValueError:
        raise BadMessage("field", f"{key!r} is not a decimal: {value!r}"[:160]) from None
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise BadMessage("value", f"{key!r}={value!r} is not a positive finite number"[:160])
    return number


def require_bool(data: Mapping[str, Any], key: str) -> bool:
    value = require(data, key)
    if not isinstance(value, bool):
        raise BadMessage("field", f"{key!r} is not a boolean: {value!r}"[:160])
    return value


def require_symbol(data: Mapping[str, Any], key: str = "s") -> str:
    value = require(data, key)
    if not isinstance(value, str) or not value:
        raise BadMessage("field", f"{key!r} is not a symbol: {value!r}"[:160])
    return value.upper()


def trade(data: Mapping[str, Any], ts_ingest: int = 0) -> Trade:
    """A ``trade`` payload (id ``t``) or an ``aggTrade`` payload (id ``a``) as a Trade."""
    id_key = "a" if data.get("e") == "aggTrade" else "t"
    return Trade(
        exchange=VENUE,
        symbol=require_symbol(data),
        trade_id=require_int(data, id_key),
        price=require_positive(data, "p"),
        qty=require_positive(data, "q"),
        side="sell" if require_bool(data, "m") else "buy",
        ts_event=require_int(data, "T"),
        ts_ingest=ts_ingest,
    )


def kline(data: Mapping[str, Any]) -> Kline:
    k = require(data, "k")
    if not isinstance(k, dict):
        raise BadMessage("field", "'k' is not an object")
    volume = require_positive(k, "v", allow_zero=True)
    quote = require_positive(k, "q", allow_zero=True)
    close = require_positive(k, "c")
    interval_ms = require_int(k, "T") + 1 - require_int(k, "t")
    if interval_ms <= 0:
        raise BadMessage("value", "kline close time before its open time")
    bar = Bar(
        exchange=VENUE,
        symbol=require_symbol(k),
        ts=require_int(k, "t"),
        interval_ms=interval_ms,
        open=require_positive(k, "o"),
        high=require_positive(k, "h"),
        low=require_positive(k, "l"),
        close=close,
        volume=volume,
        trades=require_int(k, "n"),
        buy_volume=require_positive(k, "V", allow_zero=True),
        vwap=quote / volume if volume > 0 and quote > 0 else close,
        # Binance sends -1 for both when the kline had no trades.
        first_trade_id=k["f"] if isinstance(k.get("f"), int) else -1,
        last_trade_id=k["L"] if isinstance(k.get("L"), int) else -1,
    )
    return Kline(bar=bar, closed=require_bool(k, "x"))


def normalise(message: Any, ts_ingest: int = 0) -> Event:
    """One decoded frame (raw or combined) as a Trade, a Kline or a Control."""
    if not isinstance(message, dict):
        raise BadMessage("field", f"frame is a JSON {type(message).__name__}, not an object")
    if "result" in message and "id" in message:  # reply to a SUBSCRIBE/LIST_SUBSCRIPTIONS request
        return Control("ack")
    data = message.get("data", message) if "stream" in message else message
    if not isinstance(data, dict):
        raise BadMessage("field", "'data' is not an object")
    event = data.get("e")
    if event in TRADE_STREAMS:
        return trade(data, ts_ingest)
    if event == "kline":
        return kline(data)
    if event == "serverShutdown":
        return Control("shutdown")
    if "error" in message:
        raise BadMessage("event", f"error reply: {message['error']!r}"[:160])
    raise BadMessage("event", f"unknown event type {event!r}"[:80])


# --- subscriptions and URLs ------------------------------------------------------------------


def stream_names(symbols: Iterable[str], streams: Iterable[str]) -> list[str]:
    """``btcusdt@trade``-style names, validated.

    >>> stream_names(["BTCUSDT", "ethusdt"], ["trade", "kline_1m"])
    ['btcusdt@trade', 'btcusdt@kline_1m', 'ethusdt@trade', 'ethusdt@kline_1m']
    """
    streams = list(streams)
    for s in streams:
        if s not in TRADE_STREAMS and not (s.startswith("kline_") and s[6:] in KLINE_INTERVALS):
            raise ValueError(f"unsupported stream {s!r}: use trade, aggTrade or kline_<interval>")
    if all(s in streams for s in TRADE_STREAMS):
        # Trade ids and aggregate ids are different sequences; gap detection needs one.
        raise ValueError("subscribe to trade or aggTrade, not both")
    names = [f"{sym.lower()}@{s}" for sym in symbols for s in streams]
    if not names:
        raise ValueError("no streams to subscribe to")
    return names


def connect_url(base_url: str, names: Sequence[str]) -> str:
    """The combined-stream URL under ``base_url``, unless it already names its streams.

    >>> connect_url("ws://127.0.0.1:9000", ["btcusdt@trade", "ethusdt@trade"])
    'ws://127.0.0.1:9000/stream?streams=btcusdt@trade/ethusdt@trade'
    >>> connect_url("ws://127.0.0.1:9000/ws/btcusdt@trade", ["btcusdt@trade"])
    'ws://127.0.0.1:9000/ws/btcusdt@trade'
    """
    parts = urlsplit(base_url)
    if parts.path.startswith("/ws/") or (parts.path.startswith("/stream") and parts.query):
        return base_url
    return urlunsplit((parts.scheme, parts.netloc, "/stream", "streams=" + "/".join(names), ""))


def rest_base(ws_url: str) -> str:
    """Where the REST API lives for a stream endpoint.

    >>> rest_base("wss://stream.binance.com:9443/stream?streams=btcusdt@trade")
    'https://api.binance.com'
    >>> rest_base("ws://127.0.0.1:9000")
    'http://127.0.0.1:9000'
    """
    parts = urlsplit(ws_url)
    host = parts.hostname or ""
    if host.endswith("stream.binance.com"):
        return "https://api.binance.com"
    if host == "data-stream.binance.vision":
        return "https://data-api.binance.vision"
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


# --- REST backfill ----------------------------------------------------------------------------


def backfill_params(symbol: str, by_agg_id: bool, after_id: int, after_ts: int,
                    page_from: int | None) -> dict[str, str]:
    """Query for one ``/api/v3/aggTrades`` page.

    aggTrade streams page by aggregate id directly. Trade streams cannot (trade
    ids are not aggregate ids), so the first page starts at the event time of
    the last trade published and later pages follow the aggregate ids returned.
    """
    params = {"symbol": symbol.upper(), "limit": str(REST_LIMIT)}
    if page_from is not None:
        params["fromId"] = str(page_from)
    elif by_agg_id:
        params["fromId"] = str(after_id + 1)
    else:
        params["startTime"] = str(after_ts)
    return params


def backfill_trades(symbol: str, rows: Any, by_agg_id: bool, after_id: int,
                    before_id: int, ts_ingest: int = 0) -> tuple[list[Trade], int | None]:
    """Trades with ids strictly between ``after_id`` and ``before_id`` from one aggTrades page,
    and the ``fromId`` of the next page (None when this page reached ``before_id`` or the end).

    For trade streams each aggregate (one taker order at one price) covers trade
    ids ``f..l``; those ids share its quantity equally. Price, side, time and the
    total quantity stay exact, so bars built from them are exact too.
    """
    if not isinstance(rows, list):
        raise BadMessage("field", f"aggTrades reply is a JSON {type(rows).__name__}, not a list")
    out: list[Trade] = []
    last_covered = after_id
    for row in rows:
        if not isinstance(row, dict):
            raise BadMessage("field", "aggTrades row is not an object")
        price, qty, ts = require_positive(row, "p"), require_positive(row, "q"), require_int(row, "T")
        side = "sell" if require_bool(row, "m") else "buy"
        first, last = (require_int(row, "a"),) * 2 if by_agg_id else (require_int(row, "f"), require_int(row, "l"))
        if last < first:
            raise BadMessage("value", f"aggTrades row with l={last} < f={first}")
        share = qty / (last - first + 1)
        for tid in range(max(first, after_id + 1), min(last, before_id - 1) + 1):
            out.append(Trade(exchange=VENUE, symbol=symbol.upper(), trade_id=tid, price=price, qty=share,
                             side=side, ts_event=ts, ts_ingest=ts_ingest))
        last_covered = max(last_covered, last)
    if not rows or len(rows) < REST_LIMIT or last_covered >= before_id - 1:
        return out, None
    return out, require_int(rows[-1], "a") + 1

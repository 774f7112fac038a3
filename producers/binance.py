"""Binance spot wire format → records. Pure functions, no I/O.

Covers what the producer subscribes to: ``trade``, ``aggTrade`` and ``kline``
payloads, raw (``/ws/<name>``) or in the combined-stream wrapper
``{"stream": ..., "data": ...}``, plus the REST ``/api/v3/aggTrades`` rows used
for backfill. Field meanings follow ``binance_web-socket-streams.md``: ``m`` is
"the buyer is the market maker", so the taker sold when it is true.

Anything else raises ``BadMessage`` with a reason kind (``json``, ``event``,
``field``, ``value``, ``symbol``, ``size``) the producer dead-letters.
``BINANCE`` is the adapter behind ``producers.venue.Venue``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from chaincast.models.timeunits import now_ms
from chaincast.producers.checkpoint import Position
from chaincast.producers.venue import (
    BadMessage,
    Control,
    Event,
    Fetch,
    FetchFailed,
    Kline,
    decode,
    require,
    require_bool,
    require_int,
    require_positive,
    require_symbol,
)
from chaincast.stream.records import Bar, Trade

VENUE = "binance"
TRADE_STREAMS = ("trade", "aggTrade")
KLINE_INTERVALS = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M")
AGG_TRADES_PATH = "/api/v3/aggTrades"
KLINES_PATH = "/api/v3/klines"
REST_LIMIT = 1000  # the most /api/v3/aggTrades returns per call


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


# --- the adapter ------------------------------------------------------------------------------


class BinanceVenue:
    """The Binance spot wire format behind ``producers.venue.Venue``."""

    name = VENUE

    def validate(self, symbols: Sequence[str], streams: Sequence[str]) -> None:
        stream_names(symbols, streams)

    def connect_url(self, base_url: str, symbols: Sequence[str], streams: Sequence[str]) -> str:
        return connect_url(base_url, stream_names(symbols, streams))

    def subscribe_messages(self, symbols: Sequence[str], streams: Sequence[str]) -> list[str]:
        return []  # the URL subscribes

    def decode(self, raw: str | bytes, max_bytes: int, ts_ingest: int) -> Event:
        return normalise(decode(raw, max_bytes), ts_ingest)

    def rest_base(self, ws_url: str) -> str | None:
        return rest_base(ws_url)

    async def backfill(self, fetch: Fetch, symbol: str, after: Position, before_id: int,
                       streams: Sequence[str], cap: int) -> tuple[list[Trade], str]:
        by_agg_id = "aggTrade" in streams
        out: list[Trade] = []
        page: int | None = None
        while len(out) < cap:
            params = backfill_params(symbol, by_agg_id, after.trade_id, after.ts_event, page)
            try:
                rows = await fetch(AGG_TRADES_PATH, params)
                trades, page = backfill_trades(symbol, rows, by_agg_id, after.trade_id, before_id, now_ms())
            except (FetchFailed, BadMessage) as exc:
                return out, f"backfill failed: {exc}"[:200]
            out.extend(t for t in trades if not out or t.trade_id > out[-1].trade_id)
            if page is None:
                return out, "not available over REST" if len(out) < before_id - after.trade_id - 1 else ""
        return out, f"backfill capped at {cap} trades"


BINANCE = BinanceVenue()

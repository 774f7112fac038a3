"""Coinbase Exchange ``matches`` channel → Trade records. Pure functions, no I/O.

The second venue behind the producer's adapter seam. A ``match`` (and the
``last_match`` sent right after subscribing) is one trade; its ``side`` is the
*maker* order's side, so the taker, which chaincast records, did the opposite.
Trade ids (``trade_id``) are contiguous per product, so gaps are detectable;
there is no backfill here, a gap is reported and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from chaincast.producers.checkpoint import Position
from chaincast.producers.venue import (
    BadMessage,
    Control,
    Event,
    Fetch,
    decode,
    require,
    require_int,
    require_positive,
)
from chaincast.stream.records import Trade

VENUE = "coinbase"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_QUIET = ("subscriptions", "heartbeat")

__all__ = ["COINBASE", "VENUE", "decode", "normalise", "subscribe_message", "trade", "BadMessage", "Event"]


def _ts_ms(value: Any) -> int:
    if not isinstance(value, str):
        raise BadMessage("field", f"'time' is not a timestamp: {value!r}"[:160])
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadMessage("field", f"'time' is not ISO 8601: {value!r}"[:160]) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    # Integer arithmetic: float seconds * 1000 can land a millisecond off.
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def trade(data: Mapping[str, Any], ts_ingest: int = 0) -> Trade:
    maker_side = require(data, "side")
    if maker_side not in ("buy", "sell"):
        raise BadMessage("field", f"'side' is not buy/sell: {maker_side!r}"[:160])
    product = require(data, "product_id")
    if not isinstance(product, str) or not product:
        raise BadMessage("field", f"'product_id' is not a product: {product!r}"[:160])
    return Trade(
        exchange=VENUE,
        symbol=product.upper(),
        trade_id=require_int(data, "trade_id"),
        price=require_positive(data, "price"),
        qty=require_positive(data, "size"),
        side="sell" if maker_side == "buy" else "buy",
        ts_event=_ts_ms(require(data, "time")),
        ts_ingest=ts_ingest,
    )


def normalise(message: Any, ts_ingest: int = 0) -> Event:
    if not isinstance(message, dict):
        raise BadMessage("field", f"frame is a JSON {type(message).__name__}, not an object")
    kind = message.get("type")
    if kind in ("match", "last_match"):
        return trade(message, ts_ingest)
    if kind in _QUIET:
        return Control("ack")
    if kind == "error":
        raise BadMessage("event", f"error reply: {message.get('message')!r} {message.get('reason')!r}"[:160])
    raise BadMessage("event", f"unknown message type {kind!r}"[:80])


def subscribe_message(products: Iterable[str]) -> str:
    """The one message that subscribes to the matches of ``products``.

    >>> subscribe_message(["btc-usd"])
    '{"type":"subscribe","product_ids":["BTC-USD"],"channels":["matches"]}'
    """
    return orjson.dumps({"type": "subscribe", "product_ids": [p.upper() for p in products],
                         "channels": ["matches"]}).decode()


class CoinbaseVenue:
    """The Coinbase Exchange ``matches`` channel behind ``producers.venue.Venue`` (no REST backfill)."""

    name = VENUE

    def validate(self, symbols: Sequence[str], streams: Sequence[str]) -> None:
        if any(s != "matches" for s in streams):
            raise ValueError("coinbase: only the 'matches' channel is supported")

    def connect_url(self, base_url: str, symbols: Sequence[str], streams: Sequence[str]) -> str:
        return base_url

    def subscribe_messages(self, symbols: Sequence[str], streams: Sequence[str]) -> list[str]:
        return [subscribe_message(symbols)]

    def decode(self, raw: str | bytes, max_bytes: int, ts_ingest: int) -> Event:
        return normalise(decode(raw, max_bytes), ts_ingest)

    def rest_base(self, ws_url: str) -> str | None:
        return None

    async def backfill(self, fetch: Fetch, symbol: str, after: Position, before_id: int,
                       streams: Sequence[str], cap: int) -> tuple[list[Trade], str]:
        return [], "no backfill for this venue"


COINBASE = CoinbaseVenue()

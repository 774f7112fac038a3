"""The venue seam: what one exchange's wire format owns, behind one interface.

The exchange producer (``producers.exchange``) is a generic loop: connections,
cursors, batching, acks, checkpoints and gap handling. A ``Venue`` adapter knows
one wire format (ethereum-etl's streamer/adapter split): which streams exist, the
URL and subscription messages that open them, how a frame decodes into an
``Event``, and how missed trades are fetched back over REST. Adapters:
``producers.binance.BINANCE``, ``producers.coinbase.COINBASE``.

Also here: the events a frame decodes into and the field helpers every
normaliser shares. A frame that cannot be used raises ``BadMessage`` with a
reason kind (``json``, ``event``, ``field``, ``value``, ``symbol``, ``size``).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

from chaincast.producers.checkpoint import Position
from chaincast.stream.records import Bar, Trade


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



# GET ``path`` (under the venue's REST base) with ``params``; the parsed JSON reply, or FetchFailed.
Fetch = Callable[[str, Mapping[str, str]], Awaitable[Any]]


class FetchFailed(Exception):
    """The REST request did not get an answer (transport error, HTTP error, timeout)."""


class Venue(Protocol):
    """One exchange's wire format. ``symbols`` are the venue's own spelling, upper-cased."""

    name: str

    def validate(self, symbols: Sequence[str], streams: Sequence[str]) -> None:
        """Raise ValueError for streams or symbols this venue cannot serve."""

    def connect_url(self, base_url: str, symbols: Sequence[str], streams: Sequence[str]) -> str:
        """The websocket URL to open for these symbols and streams."""

    def subscribe_messages(self, symbols: Sequence[str], streams: Sequence[str]) -> list[str]:
        """Messages to send once connected (none when the URL subscribes)."""

    def decode(self, raw: str | bytes, max_bytes: int, ts_ingest: int) -> Event:
        """One frame as an Event; BadMessage when it cannot be used."""

    def rest_base(self, ws_url: str) -> str | None:
        """Where missed trades can be fetched for a stream endpoint; None: no backfill (gaps are reported)."""

    async def backfill(self, fetch: Fetch, symbol: str, after: Position, before_id: int,
                       streams: Sequence[str], cap: int) -> tuple[list[Trade], str]:
        """Trades with ids in (after, before_id), at most ``cap``, and why any are missing ("" if none);
        a failed fetch ends the backfill with what was recovered so far and the reason."""

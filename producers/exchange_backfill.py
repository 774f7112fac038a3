"""Gaps in a venue's trade ids: detected per symbol, fetched back over REST, the rest reported.

``TradeCursor`` tells the next trade, a duplicate and a gap apart from the last id
queued per symbol. ``GapFiller`` asks the venue adapter (``producers.venue``) for
the missing ids over REST; what it cannot recover is published as a ``Gap``
record and counted, so a hole is never silent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client import Counter

from chaincast.producers.checkpoint import Position
from chaincast.producers.venue import FetchFailed, Venue
from chaincast.stream.publish import Publisher
from chaincast.stream.records import Gap, Trade, market_key
from chaincast.stream.settings import Settings

if TYPE_CHECKING:
    from chaincast.producers.exchange import ProducerStats

log = logging.getLogger(__name__)

GAPS = Counter("chaincast_exchange_gaps_total", "Jumps in trade ids detected", ["venue", "symbol"])
MISSING = Counter("chaincast_exchange_missing_trades_total", "Trade ids lost for good (not backfilled)",
                  ["venue", "symbol"])
BACKFILLED = Counter("chaincast_exchange_backfilled_trades_total", "Trades recovered over REST", ["venue", "symbol"])


class TradeCursor:
    """Per-symbol last trade id queued: tells next, duplicate and gap apart.

    >>> c = TradeCursor({"X": Position(10, 0)})
    >>> c.jump("X", 10), c.jump("X", 11), c.jump("X", 14), c.jump("Y", 99)
    (-1, 0, 3, 0)
    """

    def __init__(self, start: Mapping[str, Position]) -> None:
        self.last = dict(start)

    def jump(self, symbol: str, trade_id: int) -> int:
        """Ids skipped before ``trade_id`` (0: next in line or first seen); -1: a duplicate."""
        pos = self.last.get(symbol)
        if pos is None:
            return 0
        if trade_id <= pos.trade_id:
            return -1
        return trade_id - pos.trade_id - 1

    def advance(self, trade: Trade) -> None:
        self.last[trade.symbol] = Position(trade.trade_id, trade.ts_event)

    def forget(self, symbol: str) -> None:
        """After a venue reset: the next trade of ``symbol`` is first seen."""
        self.last.pop(symbol, None)


class GapFiller:
    """Backfill over the venue's REST API; report what stays missing."""

    def __init__(self, settings: Settings, publisher: Publisher, venue: Venue, ws_url: str,
                 streams: Sequence[str], stats: "ProducerStats") -> None:
        self.settings = settings
        self.publisher = publisher
        self.venue = venue
        self.streams = list(streams)
        self.rest_base = settings.exchange_rest_url or venue.rest_base(ws_url)
        self.stats = stats
        self._http: aiohttp.ClientSession | None = None

    async def fill(self, before: Position, trade: Trade, skipped: int) -> list[Trade]:
        """The trades recovered between ``before`` and ``trade`` (``skipped`` ids apart), in id order."""
        sym, venue = trade.symbol, self.venue.name
        GAPS.labels(venue, sym).inc()
        self.stats.gaps += 1
        if self.rest_base is None:
            recovered, why = [], "no backfill for this venue"
        else:
            recovered, why = await self.venue.backfill(self._get_json, sym, before, trade.trade_id, self.streams,
                                                       self.settings.exchange_backfill_max)
        BACKFILLED.labels(venue, sym).inc(len(recovered))
        self.stats.backfilled += len(recovered)
        missing = skipped - len(recovered)
        log.info("%s %s: gap of %d ids after %d, %d backfilled", venue, sym, skipped, before.trade_id,
                 len(recovered))
        if missing > 0:
            MISSING.labels(venue, sym).inc(missing)
            self.stats.missing += missing
            gap = Gap(exchange=venue, symbol=sym, after_id=before.trade_id, before_id=trade.trade_id,
                      missing=missing, backfilled=len(recovered), ts_after=before.ts_event,
                      ts_before=trade.ts_event, reason=why)
            await self.publisher.send(self.settings.topic_gaps, market_key(venue, sym), gap)
        return recovered

    async def _get_json(self, path: str, params: Mapping[str, str]) -> Any:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with self._http.get(self.rest_base + path, params=dict(params)) as resp:
                resp.raise_for_status()
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("backfill request %s failed: %s", path, exc)
            raise FetchFailed(str(exc)) from None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

"""The exchange producer: a websocket client that keeps trades flowing into Kafka for weeks.

A generic loop over one ``producers.venue.Venue`` adapter (ethereum-etl's
streamer/adapter split): the loop knows connections, cursors, batching, acks,
checkpoints and backfill; the adapter (``producers.binance``,
``producers.coinbase``) knows one wire format. Three modules:
this one (the connection loop and each frame), ``exchange_batching`` (batches,
acks, checkpoint) and ``exchange_backfill`` (gaps).

What it guarantees, per symbol, as long as the venue's trade ids are contiguous:
- trades reach ``topic_trades`` in id order, as ``TradeBatch`` records keyed
  ``venue:SYMBOL`` (one symbol's consecutive trades, at most ``exchange_batch_max``
  of them, held at most ``exchange_linger_ms``);
- an id at or below the last one queued is a duplicate (a reconnect or a
  restarted exchange replays them) and is dropped;
- an id past ``last + 1`` is a gap: the missing ids are fetched over REST where
  the venue has it, the rest are reported as a ``Gap`` record and counted;
- ``stream.bounds`` at the edge: a trade dated too far ahead or with a
  non-finite notional is dead-lettered; an id jump beyond the bound is a venue
  reset (logged, counted, position re-based), not a gap or a run of duplicates;
- the last id the broker acknowledged is checkpointed under ``settings.home``,
  per venue and server, so a restarted producer resumes (and backfills) from
  there, and another server never inherits the position.
Connections are re-opened with jittered exponential backoff, and rolled over
before the exchange's 24-hour limit. websockets answers the server's pings.
Frames that are not trades the producer asked for go to the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import websockets
from prometheus_client import Counter
from pydantic import ValidationError
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from chaincast.models.timeunits import now_ms
from chaincast.producers.binance import BINANCE
from chaincast.producers.checkpoint import Checkpoint
from chaincast.producers.coinbase import COINBASE
from chaincast.producers.exchange_backfill import GapFiller, TradeCursor
from chaincast.producers.exchange_batching import Batcher
from chaincast.producers.venue import BadMessage, Control, Kline, Venue
from chaincast.stream.bounds import Bounds, OutOfBounds
from chaincast.stream.health import HEALTH
from chaincast.stream.publish import Publisher
from chaincast.stream.records import Trade, market_key
from chaincast.stream.settings import Settings
from chaincast.stream.topics import ensure_topics

log = logging.getLogger(__name__)

SOURCE = "producer.exchange"

MESSAGES_IN = Counter("chaincast_exchange_messages_total", "Websocket frames received", ["venue", "kind"])
DUPLICATES = Counter("chaincast_exchange_duplicates_total", "Trades dropped as already published", ["venue", "symbol"])
RECONNECTS = Counter("chaincast_exchange_reconnects_total", "Websocket reconnections", ["venue", "reason"])
KLINES_CLOSED = Counter("chaincast_exchange_klines_closed_total", "Closed klines (x=true) received",
                        ["venue", "symbol"])

VENUES: dict[str, Venue] = {v.name: v for v in (BINANCE, COINBASE)}


def backoff_delay(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, so clients spread out.

    >>> r = random.Random(0)
    >>> [round(backoff_delay(n, 0.5, 4.0, r), 2) for n in range(5)]
    [0.46, 0.88, 1.42, 2.52, 3.02]
    """
    ceiling = min(cap, initial * 2 ** min(attempt, 30))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


@dataclass
class ProducerStats:
    """What one run did; the CLI prints it, tests read it."""

    messages: int = 0
    trades: int = 0  # acknowledged by Kafka
    duplicates: int = 0
    gaps: int = 0
    backfilled: int = 0
    missing: int = 0
    dead_letters: int = 0
    klines_closed: int = 0
    connections: int = 0
    resets: int = 0  # trade-id jumps beyond the bound, taken as venue resets
    reasons: list[str] = field(default_factory=list)  # dead-letter reasons, for the CLI summary


class ReconnectNow(Exception):
    """The server asked us to go (serverShutdown); not an error."""


class ExchangeProducer:
    """One venue, one connection at a time, any number of symbols."""

    def __init__(self, settings: Settings, publisher: Publisher, venue: Venue, url: str,
                 symbols: Sequence[str], streams: Sequence[str], *, rng: random.Random | None = None) -> None:
        venue.validate(symbols, streams)
        self.settings = settings
        self.publisher = publisher
        self.venue = venue
        self.symbols = {s.upper() for s in symbols}
        self.url = venue.connect_url(url, sorted(self.symbols), list(streams))
        self.streams = list(streams)
        self.stats = ProducerStats()
        self.bounds = Bounds.from_settings(settings)
        checkpoint = Checkpoint.for_endpoint(settings.home, venue.name, url)
        self.acked = {s: p for s, p in checkpoint.load().items() if s in self.symbols}  # updated by the batcher
        self.cursor = TradeCursor(self.acked)
        self.batcher = Batcher(settings, publisher, venue.name, checkpoint, self.acked, self.bounds, self.stats)
        self.gaps = GapFiller(settings, publisher, venue, self.url, self.streams, self.stats)
        self._rng = rng or random.Random()
        self._session_messages = 0  # frames on the current connection
        self._closed_kline_ts: dict[str, int] = {}  # per symbol; klines are informational, so not checkpointed
        # Metric children looked up once: .labels() per frame is a measurable share of the hot path.
        self._m_in = {kind: MESSAGES_IN.labels(venue.name, kind) for kind in ("trade", "kline", "control", "refused")}
        self._rolled = False  # the current connection was closed for the 24 h rollover

    # --- the connection loop ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> ProducerStats:
        heartbeat = asyncio.create_task(HEALTH.heartbeat())  # /livez fails if this loop stalls
        ticker = asyncio.create_task(self.batcher.tick())
        ticker.add_done_callback(self._ticker_done)
        attempt = 0
        try:
            while not stop.is_set():
                reason = await self._connection(stop)
                self._raise_if_failed()
                if stop.is_set():
                    break
                RECONNECTS.labels(self.venue.name, reason).inc()
                if self._session_messages:
                    attempt = 0  # the connection worked: start the backoff over
                delay = 0.0 if reason == "rollover" else backoff_delay(
                    attempt, self.settings.exchange_backoff_initial_s, self.settings.exchange_backoff_max_s, self._rng)
                attempt += 1
                log.info("reconnecting to %s in %.2fs (%s)", self.venue.name, delay, reason)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            ticker.cancel()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await self.batcher.close()
            await self.gaps.close()
        return self.stats

    async def _connection(self, stop: asyncio.Event) -> str:
        """One websocket session; returns why it ended (a metric label)."""
        try:
            async with websockets.connect(
                self.url, max_size=8 * self.settings.max_message_bytes, max_queue=4096,
                compression=None, open_timeout=10, ping_interval=20, ping_timeout=60, close_timeout=5,
            ) as ws:
                self.stats.connections += 1
                self._session_messages = 0
                self._rolled = False
                log.info("connected to %s (%d symbols)", self.venue.name, len(self.symbols))
                for message in self.venue.subscribe_messages(sorted(self.symbols), self.streams):
                    await ws.send(message)
                closer = asyncio.create_task(self._close_on(ws, stop))
                try:
                    async for raw in ws:
                        self._session_messages += 1
                        await self._handle(raw)
                        if self.batcher.failure is not None:
                            return "kafka"
                except ReconnectNow:
                    return "shutdown"
                finally:
                    closer.cancel()
                return "rollover" if self._rolled else "closed"
        except InvalidURI:
            raise
        except InvalidHandshake as exc:
            log.warning("%s refused the websocket: %s", self.venue.name, exc)
            return "handshake"
        except ConnectionClosed as exc:
            log.warning("%s connection dropped: %s", self.venue.name, exc)
            return "dropped"
        except (OSError, TimeoutError) as exc:
            log.warning("cannot reach %s: %s", self.venue.name, exc)
            return "unreachable"

    async def _close_on(self, ws: websockets.ClientConnection, stop: asyncio.Event) -> None:
        """Close the socket on stop, or at the rollover deadline (flagged, so we come straight back)."""
        try:
            await asyncio.wait_for(stop.wait(), self.settings.exchange_max_connection_s)
        except TimeoutError:
            self._rolled = True
        await ws.close()

    def _ticker_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.batcher.failure = task.exception()  # the reader notices after its next frame and stops the run

    def _raise_if_failed(self) -> None:
        if self.batcher.failure is not None:
            raise self.batcher.failure

    # --- one frame ----------------------------------------------------------------------------

    async def _handle(self, raw: str | bytes) -> None:
        self.stats.messages += 1
        try:
            event = self.venue.decode(raw, self.settings.max_message_bytes, now_ms())
            if isinstance(event, Trade):
                if event.symbol not in self.symbols:
                    raise BadMessage("symbol", f"{event.symbol} is not subscribed")
                self._m_in["trade"].inc()
                await self._on_trade(event)
            elif isinstance(event, Kline):
                self._m_in["kline"].inc()
                if event.bar.symbol not in self.symbols:
                    raise BadMessage("symbol", f"{event.bar.symbol} is not subscribed")
                if event.closed:
                    await self._on_closed_kline(event)
            elif isinstance(event, Control):
                self._m_in["control"].inc()
                if event.kind == "shutdown":
                    raise ReconnectNow()
        except BadMessage as exc:
            await self._dead_letter(raw, exc.reason)
        except ValidationError as exc:  # a record constraint the field checks did not catch
            await self._dead_letter(raw, f"value: {exc.errors()[0]['msg']}"[:200])

    async def _dead_letter(self, raw: str | bytes, reason: str) -> None:
        self._m_in["refused"].inc()
        self.stats.dead_letters += 1
        if len(self.stats.reasons) < 100:
            self.stats.reasons.append(reason)
        if len(raw) > self.settings.max_message_bytes:
            raw = raw[: self.settings.max_message_bytes // 2]  # the letter itself must fit a Kafka record
            reason += " (raw truncated)"
        await self.publisher.dead_letter(SOURCE, raw, reason, key=self.venue.name)

    async def _on_trade(self, trade: Trade) -> None:
        try:
            self.bounds.check_trade(trade.ts_event, trade.price, trade.qty)
        except OutOfBounds as exc:
            kind, _, detail = str(exc).partition(": ")
            raise BadMessage(kind, detail) from None
        last = self.cursor.last.get(trade.symbol)
        if last is not None and self.bounds.is_reset(last.trade_id, trade.trade_id):
            # Not a gap of billions to backfill, nor a stream of "duplicates": the ids restarted.
            self.bounds.reset(SOURCE, trade.symbol, last.trade_id, trade.trade_id)
            self.stats.resets += 1
            self.cursor.forget(trade.symbol)
        skipped = self.cursor.jump(trade.symbol, trade.trade_id)
        if skipped < 0:
            DUPLICATES.labels(self.venue.name, trade.symbol).inc()
            self.stats.duplicates += 1
            return
        if skipped > 0:
            for recovered in await self.gaps.fill(self.cursor.last[trade.symbol], trade, skipped):
                await self._queue(recovered)
        await self._queue(trade)

    async def _queue(self, trade: Trade) -> None:
        self.cursor.advance(trade)
        await self.batcher.queue(trade)

    async def _on_closed_kline(self, kline: Kline) -> None:
        last = self._closed_kline_ts.get(kline.bar.symbol)
        if last is not None and kline.bar.ts <= last:  # replayed after a reconnect
            return
        self._closed_kline_ts[kline.bar.symbol] = kline.bar.ts
        KLINES_CLOSED.labels(self.venue.name, kline.bar.symbol).inc()
        self.stats.klines_closed += 1
        if self.settings.topic_exchange_klines:
            await self.publisher.send(self.settings.topic_exchange_klines,
                                      market_key(self.venue.name, kline.bar.symbol), kline.bar)


async def run_exchange_producer(settings: Settings, url: str | None = None, symbols: Sequence[str] | None = None,
                                streams: Sequence[str] = ("trade", "kline_1m"),
                                stop: asyncio.Event | float | None = None, venue: str = "binance") -> ProducerStats:
    """Run the producer until ``stop`` is set, for ``stop`` seconds if a number, or forever.

    ``url`` defaults to ``settings.exchange_url``; ``symbols`` to ``settings.symbols``.
    """
    url = url or settings.exchange_url
    if not url:
        raise ValueError("no exchange URL: pass one or set CHAINCAST_EXCHANGE_URL")
    if venue not in VENUES:
        raise ValueError(f"unknown venue {venue!r}; known: {', '.join(VENUES)}")
    event = stop if isinstance(stop, asyncio.Event) else asyncio.Event()
    timer = asyncio.get_running_loop().call_later(stop, event.set) if isinstance(stop, (int, float)) else None
    await ensure_topics(settings)
    try:
        async with Publisher(settings) as publisher:
            producer = ExchangeProducer(settings, publisher, VENUES[venue], url, symbols or settings.symbols, streams)
            return await producer.run(event)
    finally:
        if timer is not None:
            timer.cancel()

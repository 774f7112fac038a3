"""The exchange producer: a websocket client that keeps trades flowing into Kafka for weeks.

The wire lives here; turning a payload into a record lives in the venue
modules (``producers.binance``, ``producers.coinbase``), behind ``Venue``.

What it guarantees, per symbol, as long as the venue's trade ids are contiguous:
- trades reach ``topic_trades`` in id order, as ``TradeBatch`` records keyed
  ``venue:SYMBOL`` (one symbol's consecutive trades, at most ``exchange_batch_max``
  of them, held at most ``exchange_linger_ms``);
- an id at or below the last one queued is a duplicate (a reconnect or a
  restarted exchange replays them) and is dropped;
- an id past ``last + 1`` is a gap: the missing ids are fetched over REST where
  the venue has it, the rest are reported as a ``Gap`` record and counted;
- the last id the broker acknowledged is checkpointed under ``settings.home``,
  so a restarted producer resumes (and backfills) from there.
Connections are re-opened with jittered exponential backoff, and rolled over
before the exchange's 24-hour limit. websockets answers the server's pings.
Frames that are not trades the producer asked for go to the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import websockets
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Histogram
from pydantic import ValidationError
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from chaincast.producers import binance, coinbase
from chaincast.producers.binance import BadMessage, Control, Event, Kline
from chaincast.producers.checkpoint import Checkpoint, Position
from chaincast.stream.bounds import Bounds, OutOfBounds
from chaincast.stream.health import HEALTH
from chaincast.stream.publish import Publisher
from chaincast.stream.records import Gap, Trade, TradeBatch, market_key
from chaincast.stream.settings import Settings
from chaincast.stream.topics import ensure_topics

log = logging.getLogger(__name__)

SOURCE = "producer.exchange"

MESSAGES_IN = Counter("chaincast_exchange_messages_total", "Websocket frames received", ["venue", "kind"])
TRADES_OUT = Counter("chaincast_exchange_trades_total", "Trades acknowledged by Kafka", ["venue", "symbol"])
DUPLICATES = Counter("chaincast_exchange_duplicates_total", "Trades dropped as already published", ["venue", "symbol"])
RECONNECTS = Counter("chaincast_exchange_reconnects_total", "Websocket reconnections", ["venue", "reason"])
GAPS = Counter("chaincast_exchange_gaps_total", "Jumps in trade ids detected", ["venue", "symbol"])
MISSING = Counter("chaincast_exchange_missing_trades_total", "Trade ids lost for good (not backfilled)",
                  ["venue", "symbol"])
BACKFILLED = Counter("chaincast_exchange_backfilled_trades_total", "Trades recovered over REST", ["venue", "symbol"])
KLINES_CLOSED = Counter("chaincast_exchange_klines_closed_total", "Closed klines (x=true) received",
                        ["venue", "symbol"])
LAG = Histogram("chaincast_exchange_lag_seconds", "Exchange event time to Kafka ack", ["venue"],
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 3600, 86400))


@dataclass(frozen=True)
class Venue:
    """What differs between exchanges: names, URLs, subscribing, payloads, backfill."""

    name: str
    normalise: Callable[[Any, int], Event]
    connect_url: Callable[[str, Sequence[str], Sequence[str]], str]
    subscribe_messages: Callable[[Sequence[str], Sequence[str]], list[str]]
    validate: Callable[[Sequence[str], Sequence[str]], None]
    rest_base: Callable[[str], str] | None = None  # None: no REST backfill, gaps are reported


def _binance_validate(symbols: Sequence[str], streams: Sequence[str]) -> None:
    binance.stream_names(symbols, streams)


BINANCE = Venue(
    name=binance.VENUE,
    normalise=binance.normalise,
    connect_url=lambda base, symbols, streams: binance.connect_url(base, binance.stream_names(symbols, streams)),
    subscribe_messages=lambda symbols, streams: [],  # the URL subscribes
    validate=_binance_validate,
    rest_base=binance.rest_base,
)


def _coinbase_validate(symbols: Sequence[str], streams: Sequence[str]) -> None:
    if any(s != "matches" for s in streams):
        raise ValueError("coinbase: only the 'matches' channel is supported")


COINBASE = Venue(
    name=coinbase.VENUE,
    normalise=coinbase.normalise,
    connect_url=lambda base, symbols, streams: base,
    subscribe_messages=lambda symbols, streams: [coinbase.subscribe_message(symbols)],
    validate=_coinbase_validate,
)

VENUES = {v.name: v for v in (BINANCE, COINBASE)}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def backoff_delay(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, so clients spread out.

    >>> r = random.Random(0)
    >>> [round(backoff_delay(n, 0.5, 4.0, r), 2) for n in range(5)]
    [0.46, 0.88, 1.42, 2.52, 3.02]
    """
    ceiling = min(cap, initial * 2 ** min(attempt, 30))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class TradeCursor:
    """Per-symbol last trade id queued: tells next, duplicate and gap apart.

    >>> c = TradeCursor({"X": Position(10, 0)})
    >>> c.jump("X", 10), c.jump("X", 11), c.jump("X", 14), c.jump("Y", 99)
    (-1, 0, 3, 0)
    """

    def __init__(self, start: dict[str, Position]) -> None:
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
    resets: int = 0  # trade-id jumps beyond the bound, taken as venue resets
    connections: int = 0
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
        self.by_agg_id = "aggTrade" in self.streams
        self.stats = ProducerStats()
        self.checkpoint = Checkpoint.for_endpoint(settings.home, venue.name, url)
        self.bounds = Bounds.from_settings(settings)
        self.acked: dict[str, Position] = {s: p for s, p in self.checkpoint.load().items() if s in self.symbols}
        self.cursor = TradeCursor(self.acked)
        self._rng = rng or random.Random()
        self._buffers: dict[str, list[Trade]] = {}
        self._send_lock = asyncio.Lock()
        self._dirty = False
        self._failure: BaseException | None = None
        self._http: aiohttp.ClientSession | None = None
        self._session_messages = 0  # frames on the current connection
        self._closed_kline_ts: dict[str, int] = {}  # per symbol; klines are informational, so not checkpointed
        # Metric children looked up once: .labels() per frame is a measurable share of the hot path.
        self._m_in = {kind: MESSAGES_IN.labels(venue.name, kind) for kind in ("trade", "kline", "control", "refused")}
        self._m_lag = LAG.labels(venue.name)
        self._rolled = False  # the current connection was closed for the 24 h rollover

    # --- the connection loop ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> ProducerStats:
        heartbeat = asyncio.create_task(HEALTH.heartbeat())  # /livez fails if this loop stalls
        ticker = asyncio.create_task(self._tick(stop))
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
            await self._shutdown()
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
                        if self._failure is not None:
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

    # --- one frame ----------------------------------------------------------------------------

    async def _handle(self, raw: str | bytes) -> None:
        self.stats.messages += 1
        try:
            event = self.venue.normalise(binance.decode(raw, self.settings.max_message_bytes), now_ms())
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
            await self._fill_gap(trade, skipped)
        await self._queue(trade)

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

    # --- gaps ---------------------------------------------------------------------------------

    async def _fill_gap(self, trade: Trade, skipped: int) -> None:
        sym = trade.symbol
        before = self.cursor.last[sym]
        GAPS.labels(self.venue.name, sym).inc()
        self.stats.gaps += 1
        recovered, why = await self._backfill(sym, before, trade.trade_id)
        for t in recovered:
            await self._queue(t)
        BACKFILLED.labels(self.venue.name, sym).inc(len(recovered))
        self.stats.backfilled += len(recovered)
        missing = skipped - len(recovered)
        log.info("%s %s: gap of %d ids after %d, %d backfilled", self.venue.name, sym, skipped,
                 before.trade_id, len(recovered))
        if missing > 0:
            MISSING.labels(self.venue.name, sym).inc(missing)
            self.stats.missing += missing
            gap = Gap(exchange=self.venue.name, symbol=sym, after_id=before.trade_id, before_id=trade.trade_id,
                      missing=missing, backfilled=len(recovered), ts_after=before.ts_event,
                      ts_before=trade.ts_event, reason=why)
            await self.publisher.send(self.settings.topic_gaps, market_key(self.venue.name, sym), gap)

    async def _backfill(self, symbol: str, after: Position, before_id: int) -> tuple[list[Trade], str]:
        """Trades with ids in (after, before_id) from the venue's REST API, and why any are missing."""
        if self.venue.rest_base is None:
            return [], "no backfill for this venue"
        base = self.settings.exchange_rest_url or self.venue.rest_base(self.url)
        out: list[Trade] = []
        page: int | None = None
        while len(out) < self.settings.exchange_backfill_max:
            params = binance.backfill_params(symbol, self.by_agg_id, after.trade_id, after.ts_event, page)
            try:
                rows = await self._get_json(base + binance.AGG_TRADES_PATH, params)
                trades, page = binance.backfill_trades(symbol, rows, self.by_agg_id, after.trade_id, before_id,
                                                       now_ms())
            except (aiohttp.ClientError, TimeoutError, BadMessage) as exc:
                log.warning("backfill of %s after %d failed: %s", symbol, after.trade_id, exc)
                return out, f"backfill failed: {exc}"[:200]
            out.extend(t for t in trades if not out or t.trade_id > out[-1].trade_id)
            if page is None:
                return out, "not available over REST" if len(out) < before_id - after.trade_id - 1 else ""
        return out, f"backfill capped at {self.settings.exchange_backfill_max} trades"

    async def _get_json(self, url: str, params: dict[str, str]) -> Any:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        async with self._http.get(url, params=params) as resp:
            resp.raise_for_status()
            return await resp.json(content_type=None)

    # --- batching and acks --------------------------------------------------------------------

    async def _queue(self, trade: Trade) -> None:
        self.cursor.advance(trade)
        buf = self._buffers.setdefault(trade.symbol, [])
        buf.append(trade)
        if len(buf) >= self.settings.exchange_batch_max:
            await self._flush(trade.symbol)

    async def _flush(self, symbol: str) -> None:
        # One lock for all sends: the ticker and the reader never reorder a symbol's batches.
        async with self._send_lock:
            trades = self._buffers.pop(symbol, None)
            if not trades:
                return
            batch = TradeBatch(exchange=self.venue.name, symbol=symbol, trades=trades)
            future = await self.publisher.producer.send(
                self.settings.topic_trades, batch.dumps(), key=market_key(self.venue.name, symbol).encode())
            future.add_done_callback(lambda f: self._acked(f, trades))

    def _acked(self, future: asyncio.Future, trades: list[Trade]) -> None:
        exc = KafkaError("send cancelled") if future.cancelled() else future.exception()
        if exc is not None or self._failure is not None:
            # The checkpoint never moves past an unacked trade, nor past a later batch acked
            # after an earlier one failed; stop and let a restart resume from it.
            if self._failure is None:
                self._failure = exc
                log.error("Kafka refused a batch of %s: %s", trades[0].symbol, exc)
            return
        symbol, last = trades[0].symbol, trades[-1]
        TRADES_OUT.labels(self.venue.name, symbol).inc(len(trades))
        self.stats.trades += len(trades)
        now = time.time()
        lag = self._m_lag
        for t in trades:
            lag.observe(max(0.0, now - t.ts_event / 1000))
        prev = self.acked.get(symbol)
        # Batches of one symbol are acked in send order, so a lower id here is a venue reset.
        if prev is None or last.trade_id > prev.trade_id or self.bounds.is_reset(prev.trade_id, last.trade_id):
            self.acked[symbol] = Position(last.trade_id, last.ts_event)
            self._dirty = True

    def _ticker_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._failure = task.exception()  # the reader notices after its next frame and stops the run

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _flush_all(self) -> None:
        for symbol in list(self._buffers):
            await self._flush(symbol)

    async def _tick(self, stop: asyncio.Event) -> None:
        """Flush lingering batches and save the checkpoint now and then."""
        linger = max(self.settings.exchange_linger_ms, 1) / 1000
        last_save = time.monotonic()
        while True:
            await asyncio.sleep(linger)
            await self._flush_all()
            if self._dirty and time.monotonic() - last_save >= self.settings.exchange_checkpoint_interval_s:
                self._dirty = False
                last_save = time.monotonic()
                await asyncio.to_thread(self.checkpoint.save, dict(self.acked))

    async def _shutdown(self) -> None:
        if self._failure is None:
            with contextlib.suppress(KafkaError):
                await self._flush_all()
                await self.publisher.flush()
        self.checkpoint.save(dict(self.acked))
        if self._http is not None:
            await self._http.close()
            self._http = None


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

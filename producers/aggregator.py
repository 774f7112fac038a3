"""Aggregator poller: a CoinGecko-style REST price API into the trades topic.

An aggregator publishes quotes, not trades: a price per coin with the time it was last
updated (``/simple/price``) and a day of price and 24 h volume points
(``/coins/{id}/market_chart``). The bars agent reads trades, so each NEW quote becomes one
synthetic trade:

- ``trade_id`` = the quote's time in ms (monotonic per coin, the same quote polled twice has
  the same id and is sent once, so the bars agent's duplicate rule holds);
- ``price`` = the quote, ``ts_event`` = its ``last_updated_at`` (event time, not poll time);
- ``side`` by the tick rule (up or unchanged = buy, down = sell);
- ``qty`` = the 24 h volume spread evenly over the day's minutes (``volume_24h / price / 1440``),
  or a token 1e-8 when the API gives no volume: a bar's volume from an aggregator is an
  estimate, not a count of traded size, so models trained on exchange bars see a different
  volume scale (keep one source per symbol).

A bar then closes when the first quote of a later minute arrives, like any trade; its OHLC
are the quotes of that minute (with a 60 s poll interval, O = H = L = C).

The wire (httpx, a rate limiter, retries) is apart from the normalisers (pure functions on
the response bytes, tested on recorded payloads). Requests stay within
``CHAINCAST_AGGREGATOR_RATE_PER_MIN`` (aiolimiter; the default is well under the public
tier's limit); a 429 backs off (tenacity, exponential with jitter, never shorter than the
server's ``Retry-After``); a malformed body or a malformed coin entry is dead-lettered with
the reason and polling goes on. The API key travels in a header and is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from chaincast.producers.checkpoint import Checkpoint, Position
from chaincast.stream.publish import Publisher
from chaincast.stream.records import Trade, market_key
from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)

VENUE = "coingecko"  # the exchange name in keys and records: coingecko:BTCUSDT
SOURCE = "producer.aggregator"
MIN_QTY = 1e-8
DAY_MINUTES = 1440
QUOTES = {"USDT": "usd", "USDC": "usd", "BUSD": "usd", "USD": "usd", "EUR": "eur", "BTC": "btc", "ETH": "eth"}


class Malformed(ValueError):
    """A response (or one coin's entry in it) that is not what the API promises."""


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"429, retry after {retry_after:g}s")
        self.retry_after = retry_after


class Unavailable(Exception):
    """A 5xx or a transport error: worth retrying, like a 429."""


@dataclass(frozen=True, slots=True)
class Quote:
    symbol: str
    price: float
    ts_ms: int
    volume_24h: float | None = None  # in the quote currency


def vs_currency(symbol: str) -> str:
    """The aggregator's quote currency of an exchange-style symbol.

    >>> vs_currency("BTCUSDT"), vs_currency("ETHBTC")
    ('usd', 'btc')
    """
    for suffix, currency in sorted(QUOTES.items(), key=lambda kv: -len(kv[0])):
        if symbol.upper().endswith(suffix) and len(symbol) > len(suffix):
            return currency
    raise ValueError(f"cannot tell the quote currency of {symbol!r}")


def _number(value: Any, what: str, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Malformed(f"{what} is not a number: {value!r}")
    x = float(value)
    if not math.isfinite(x) or (positive and x <= 0) or x < 0:
        raise Malformed(f"{what} out of range: {value!r}")
    return x


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Malformed(f"not JSON: {exc}") from None


def parse_simple_price(body: bytes, ids: dict[str, str]) -> tuple[list[Quote], list[tuple[str, str]]]:
    """Quotes from ``/simple/price`` (``include_last_updated_at`` and ``include_24hr_vol`` on), and
    (symbol, reason) for each coin whose entry is missing or malformed. A body that is not a JSON
    object raises ``Malformed``.

    >>> body = b'{"bitcoin": {"usd": 28001.5, "usd_24h_vol": 1.2e10, "last_updated_at": 1680307260}}'
    >>> parse_simple_price(body, {"BTCUSDT": "bitcoin", "ETHUSDT": "ethereum"})
    ([Quote(symbol='BTCUSDT', price=28001.5, ts_ms=1680307260000, volume_24h=12000000000.0)], \
[('ETHUSDT', 'missing: no entry for ethereum')])
    """
    data = _json(body)
    if not isinstance(data, dict):
        raise Malformed(f"expected an object, got {type(data).__name__}")
    quotes, bad = [], []
    for symbol, coin in ids.items():
        entry = data.get(coin)
        if not isinstance(entry, dict):
            bad.append((symbol, f"missing: no entry for {coin}"))
            continue
        vs = vs_currency(symbol)
        try:
            price = _number(entry.get(vs), f"{coin}.{vs}")
            updated = int(_number(entry.get("last_updated_at"), f"{coin}.last_updated_at"))
            vol = entry.get(f"{vs}_24h_vol")
            volume = None if vol is None else _number(vol, f"{coin}.{vs}_24h_vol", positive=False)
        except Malformed as exc:
            bad.append((symbol, f"malformed: {exc}"))
            continue
        quotes.append(Quote(symbol, price, updated * 1000, volume))
    return quotes, bad


def parse_market_chart(body: bytes, symbol: str) -> list[Quote]:
    """Quotes from ``/coins/{id}/market_chart``: ``prices`` [[ms, price]...] joined with
    ``total_volumes`` on time. Any malformed point makes the whole body ``Malformed``.

    >>> parse_market_chart(b'{"prices": [[60000, 10.0], [120000, 11.0]], "total_volumes": [[120000, 5e6]]}', "X")
    [Quote(symbol='X', price=10.0, ts_ms=60000, volume_24h=None), Quote(symbol='X', price=11.0, ts_ms=120000, \
volume_24h=5000000.0)]
    """
    data = _json(body)
    if not isinstance(data, dict) or not isinstance(data.get("prices"), list):
        raise Malformed("expected an object with a prices list")
    volumes: dict[int, float] = {}
    for point in data.get("total_volumes") or []:
        if isinstance(point, list) and len(point) == 2:
            volumes[int(_number(point[0], "volume time"))] = _number(point[1], "volume", positive=False)
    quotes = []
    for point in data["prices"]:
        if not isinstance(point, list) or len(point) != 2:
            raise Malformed(f"price point is not [ms, price]: {point!r}")
        ts = int(_number(point[0], "price time"))
        quotes.append(Quote(symbol, _number(point[1], "price"), ts, volumes.get(ts)))
    return sorted(quotes, key=lambda q: q.ts_ms)


class QuoteTrades:
    """Turns one symbol's quotes into synthetic trades: only newer quotes, tick-rule side.

    >>> qt, sides = QuoteTrades("BTCUSDT"), []
    >>> for q in (Quote("BTCUSDT", 10.0, 60_000), Quote("BTCUSDT", 9.0, 120_000), Quote("BTCUSDT", 9.0, 120_000)):
    ...     if (t := qt.trade(q)) is not None:
    ...         qt.sent(t)
    ...         sides.append(t.side)
    >>> sides
    ['buy', 'sell']
    """

    def __init__(self, symbol: str, last_id: int = -1, last_price: float | None = None) -> None:
        self.symbol = symbol
        self.last_id = last_id
        self.last_price = last_price

    def trade(self, q: Quote) -> Trade | None:
        if q.ts_ms <= self.last_id:
            return None  # the same quote polled again, or an older one
        qty = q.volume_24h / q.price / DAY_MINUTES if q.volume_24h else MIN_QTY
        side = "sell" if self.last_price is not None and q.price < self.last_price else "buy"
        return Trade(exchange=VENUE, symbol=self.symbol, trade_id=q.ts_ms, price=q.price, qty=max(qty, MIN_QTY),
                     side=side, ts_event=q.ts_ms, ts_ingest=int(time.time() * 1000))

    def sent(self, t: Trade) -> None:
        self.last_id, self.last_price = t.trade_id, t.price


def coin_ids(settings: Settings) -> dict[str, str]:
    """Symbol -> coin id for every configured symbol; a ValueError names what is missing or unknown."""
    missing = [s for s in settings.symbols if s not in settings.aggregator_ids]
    if missing:
        raise ValueError(f"no coin id for {', '.join(missing)}: set CHAINCAST_AGGREGATOR_IDS "
                         f"(e.g. {missing[0]}=bitcoin)")
    for s in settings.symbols:
        vs_currency(s)  # an unknown quote currency fails at start, not at the first poll
    return {s: settings.aggregator_ids[s] for s in settings.symbols}


def _wait(retry_state: RetryCallState) -> float:
    """Exponential backoff with jitter, never shorter than the server's Retry-After."""
    base = wait_exponential_jitter(initial=0.5, max=60)(retry_state)
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    return max(base, exc.retry_after) if isinstance(exc, RateLimited) else base


class AggregatorPoller:
    def __init__(self, settings: Settings, publisher: Publisher, client: httpx.AsyncClient | None = None,
                 attempts: int = 6) -> None:
        self.settings = settings
        self.publisher = publisher
        self.ids = coin_ids(settings)
        headers = {settings.aggregator_key_header: settings.aggregator_api_key} if settings.aggregator_api_key else {}
        self.client = client or httpx.AsyncClient(base_url=settings.aggregator_url.rstrip("/"), headers=headers,
                                                  timeout=30.0)
        self.limiter = AsyncLimiter(settings.aggregator_rate_per_min, 60)
        self.attempts = attempts
        # Keyed by the endpoint's host: another aggregator never inherits these positions.
        host = urlsplit(settings.aggregator_url).netloc.replace(":", "_") or "local"
        self.checkpoint = Checkpoint(settings.home / "checkpoints" / f"aggregator-{host}.json")
        start = self.checkpoint.load()
        self.state = {s: QuoteTrades(s, start[s].trade_id if s in start else -1) for s in self.ids}
        self.published = 0
        self.dead_lettered = 0

    async def close(self) -> None:
        await self.client.aclose()

    async def get(self, path: str, params: dict[str, str]) -> bytes:
        """One request within the rate limit; 429, 5xx and transport errors retried with backoff."""
        async for attempt in AsyncRetrying(wait=_wait, stop=stop_after_attempt(self.attempts), reraise=True,
                                           retry=retry_if_exception_type((RateLimited, Unavailable))):
            with attempt:
                async with self.limiter:
                    try:
                        resp = await self.client.get(path, params=params)
                    except httpx.TransportError as exc:
                        raise Unavailable(f"{type(exc).__name__}") from None
                if resp.status_code == 429:
                    log.warning("aggregator rate limit hit on %s; backing off", path)
                    raise RateLimited(_retry_after(resp.headers.get("retry-after")))
                if resp.status_code >= 500:
                    raise Unavailable(f"HTTP {resp.status_code}")
                if resp.status_code != 200:
                    raise Malformed(f"HTTP {resp.status_code}")
                return resp.content
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True

    async def backfill(self) -> None:
        """The last day of each coin (``market_chart``), from after the checkpoint on."""
        for symbol, coin in self.ids.items():
            path, body = f"/coins/{coin}/market_chart", None
            try:
                body = await self.get(path, {"vs_currency": vs_currency(symbol), "days": "1"})
                quotes = parse_market_chart(body, symbol)
            except Malformed as exc:
                await self._dead_letter(body, f"malformed: {exc}", path, key=market_key(VENUE, symbol))
                continue
            await self._publish(quotes)

    async def poll(self) -> None:
        """One ``/simple/price`` request for every coin."""
        currencies = sorted({vs_currency(s) for s in self.ids})
        params = {"ids": ",".join(sorted(set(self.ids.values()))), "vs_currencies": ",".join(currencies),
                  "include_last_updated_at": "true", "include_24hr_vol": "true"}
        body = None
        try:
            body = await self.get("/simple/price", params)
            quotes, bad = parse_simple_price(body, self.ids)
        except Malformed as exc:
            await self._dead_letter(body, f"malformed: {exc}", "/simple/price")
            return
        for symbol, reason in bad:
            await self._dead_letter(body, reason, "/simple/price", key=market_key(VENUE, symbol))
        await self._publish(quotes)

    async def run(self, stop: asyncio.Event, polls: int | None = None) -> None:
        """Backfill, then poll every ``CHAINCAST_AGGREGATOR_INTERVAL_S`` until ``stop`` (or ``polls`` polls)."""
        await self._guarded(self.backfill())
        done = 0
        while not stop.is_set() and (polls is None or done < polls):
            await self._guarded(self.poll())
            done += 1
            if polls is not None and done >= polls:
                break
            try:
                await asyncio.wait_for(stop.wait(), self.settings.aggregator_interval_s)
            except TimeoutError:
                pass

    async def _guarded(self, step: Any) -> None:
        """A round that ran out of retries is skipped (logged); the next one tries again."""
        try:
            await step
        except (RateLimited, Unavailable) as exc:
            log.warning("aggregator round skipped after %d attempts: %s", self.attempts, exc)

    async def _publish(self, quotes: list[Quote]) -> None:
        """Send the new quotes as trades; the checkpoint moves only after the broker acknowledged them."""
        pending: list[tuple[QuoteTrades, Trade, asyncio.Future]] = []
        for q in quotes:
            state = self.state[q.symbol]
            t = state.trade(q)
            if t is None:
                continue
            future = await self.publisher.producer.send(self.settings.topic_trades, t.dumps(),
                                                        key=market_key(VENUE, q.symbol).encode())
            state.sent(t)  # the next quote's side and novelty are judged against this one
            pending.append((state, t, future))
        if not pending:
            return
        await asyncio.gather(*(f for _, _, f in pending))  # raises if any send failed: no checkpoint then
        self.published += len(pending)
        self.checkpoint.save({s: Position(st.last_id, st.last_id) for s, st in self.state.items() if st.last_id >= 0})

    async def _dead_letter(self, body: bytes | None, reason: str, path: str, key: str | None = None) -> None:
        self.dead_lettered += 1
        await self.publisher.dead_letter(SOURCE, body, reason, topic=self.settings.topic_trades, key=key or path)
        await self.publisher.flush()


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (seconds form); 1 s when absent or unreadable.

    >>> _retry_after("3"), _retry_after(None), _retry_after("soon")
    (3.0, 1.0, 1.0)
    """
    try:
        return max(float(value), 0.0) if value is not None else 1.0
    except ValueError:
        return 1.0


async def run_aggregator(settings: Settings, stop: asyncio.Event, polls: int | None = None) -> AggregatorPoller:
    coin_ids(settings)  # bad configuration before any connection
    async with Publisher(settings) as publisher:
        poller = AggregatorPoller(settings, publisher)
        try:
            await poller.run(stop, polls)
        finally:
            await poller.close()
    return poller

"""Reading forecasts back out of Redis: the latest per symbol and forecaster, history, models.

The read side of what ``stream.sink`` writes; every key comes from ``stream.redis_layout``,
none is formatted here. Used by the HTTP API, the
live page and the Python client. A forecaster is one (model, target, horizon) serving one
symbol; its id is ``{target}:h{horizon}`` (``log_return:h1``), stable across model versions,
so a client can follow "the 1-bar return forecast" while models are swapped underneath.
The served forecasters are those of ``CHAINCAST_FORECASTS``: the first (the default) keeps
the historical keys without a target, every other one has keys of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from pydantic import ValidationError

from chaincast.stream.records import ModelUpdate, Prediction, forecaster_key, parse_forecaster
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.settings import Settings

READ_TIMEOUT_S = 30.0  # a reply later than this is a hung Redis; a follow's XREAD BLOCK stays well inside it
FOLLOW_BLOCK_MS = 5_000


def forecaster_id(pred: Prediction) -> str:
    """The stable name of the forecaster that made ``pred``.

    >>> p = Prediction(exchange="binance", symbol="BTCUSDT", bar_ts=0, horizon=5, y_hat=0, q10=0, q50=0, q90=0,
    ...                price=1, price_hat=1, model_name="forecaster", model_version="v", created_at=0, latency_ms=0)
    >>> forecaster_id(p)
    'log_return:h5'
    """
    return forecaster_key(pred.target, pred.horizon)


def parse(fields: dict[str, str]) -> Prediction | None:
    """A stored prediction, or None when it does not match the current record (an older schema)."""
    try:
        return Prediction.model_validate(fields)
    except ValidationError:
        return None


class UnknownForecaster(ValueError):
    """A forecaster this deployment does not serve (its message lists the served ones)."""


def served_forecasters(settings: Settings) -> dict[str, tuple[str, int] | tuple[()]]:
    """Forecaster id -> the (target, horizon) its Redis keys carry; () for the default forecaster.

    >>> served_forecasters(Settings(CHAINCAST_FORECASTS="log_return:1,volatility:5"))
    {'log_return:h1': (), 'volatility:h5': ('volatility', 5)}
    """
    specs = settings.forecast_specs
    return {forecaster_key(s.target, s.horizon): () if s == specs[0] else (s.target, s.horizon) for s in specs}


class ForecastReader:
    """Async reads of the layout; one lazy client, closed with ``close()``."""

    def __init__(self, settings: Settings) -> None:
        if not settings.redis_url:
            raise ValueError("set REDIS_URL to the Redis that chaincast writes to")
        self.settings = settings
        self.layout = RedisLayout.of(settings)
        self._client: aioredis.Redis | None = None

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            # Explicit: redis-py 8 defaults to a 5 s socket timeout, which cut a follow's 5 s
            # XREAD BLOCK whenever the server's empty reply came a moment late.
            self._client = aioredis.Redis.from_url(self.settings.redis_url, decode_responses=True,
                                                   socket_timeout=READ_TIMEOUT_S, socket_connect_timeout=5.0)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    @property
    def forecasters(self) -> list[str]:
        """The served forecasters' ids, the default first."""
        return list(served_forecasters(self.settings))

    def _extra(self, forecaster: str | None) -> tuple[str, int] | tuple[()]:
        """The key arguments of ``forecaster`` (None: the default); UnknownForecaster if not served."""
        served = served_forecasters(self.settings)
        if forecaster is None:
            return ()
        try:
            fid = forecaster_key(*parse_forecaster(forecaster))
        except ValueError as exc:
            raise UnknownForecaster(str(exc)) from None
        if fid not in served:
            raise UnknownForecaster(f"unknown forecaster {forecaster!r}; served: {', '.join(served)}")
        return served[fid]

    def resolve(self, forecaster: str | None) -> str | None:
        """The canonical id of a served forecaster (``volatility:5`` -> ``volatility:h5``); None stays None;
        UnknownForecaster if it is not served."""
        if forecaster is None:
            return None
        self._extra(forecaster)
        return forecaster_key(*parse_forecaster(forecaster))

    def history_keys(self, symbols: list[str], forecasters: list[str] | None = None) -> list[str]:
        """The history streams of ``symbols``: every served forecaster's unless ``forecasters`` is given."""
        extras = [self._extra(f) for f in (forecasters or self.forecasters)]
        return [self.layout.history(s, *e) for s in symbols for e in extras]

    async def latest(self, symbols: list[str] | None = None, forecaster: str | None = None) -> list[Prediction]:
        """The latest forecast of every served forecaster (or only ``forecaster``) of each symbol
        (configured symbols by default), symbol by symbol, the default forecaster first."""
        symbols = symbols or self.settings.symbols
        extras = [self._extra(forecaster)] if forecaster else [self._extra(f) for f in self.forecasters]
        pipe = self.client.pipeline(transaction=False)
        for sym in symbols:
            for extra in extras:
                pipe.hgetall(self.layout.latest(sym, *extra))
        replies = await pipe.execute()
        return [p for fields in replies if fields and (p := parse(fields)) is not None]

    async def history(self, symbol: str, since: int | None = None, limit: int = 100,
                      forecaster: str | None = None) -> list[Prediction]:
        """Forecasts of ``symbol`` by ``forecaster`` (the default one unless given), oldest first:
        from bar ``since`` (ms) on when given, else the latest ``limit``."""
        key = self.layout.history(symbol, *self._extra(forecaster))
        if since is not None:
            entries = await self.client.xrange(key, min=str(since), count=limit)
        else:
            entries = list(reversed(await self.client.xrevrange(key, count=limit)))
        return [p for _id, fields in entries if (p := parse(fields)) is not None]

    async def known(self, symbol: str) -> bool:
        """Configured, or forecast at some point (history kept)."""
        return symbol in self.settings.symbols or bool(await self.client.exists(*self.history_keys([symbol])))

    async def models(self) -> list[ModelUpdate]:
        """The serving version of every model that made a latest forecast (and of each configured forecaster)."""
        specs = self.settings.forecast_specs
        names = {s.model_name(self.settings.model_name, default=s == specs[0]) for s in specs}
        names |= {p.model_name for p in await self.latest()}
        pipe = self.client.pipeline(transaction=False)
        ordered = sorted(names)
        for name in ordered:
            pipe.hgetall(self.layout.model(name))
        out = []
        for name, fields in zip(ordered, await pipe.execute()):
            if not fields:
                continue
            metrics = {k.removeprefix("metric."): float(v) for k, v in fields.items() if k.startswith("metric.")}
            try:
                out.append(ModelUpdate(name=name, version=fields["version"], uri=fields.get("uri", ""),
                                       sha256=fields.get("sha256", ""), family=fields.get("family", ""),
                                       metrics=metrics, created_at=int(fields.get("created_at", 0))))
            except (KeyError, ValueError, ValidationError):
                continue
        return out

    async def scores(self, symbols: list[str], forecaster: str | None = None) -> list[dict[str, str]]:
        """The live score hash of ``forecaster`` (the default one unless given) for each symbol
        ({} where none was written yet)."""
        extra = self._extra(forecaster)
        pipe = self.client.pipeline(transaction=False)
        for sym in symbols:
            pipe.hgetall(self.layout.score(sym, *extra))
        return list(await pipe.execute())

    async def follow(self, symbols: list[str] | None = None, block_ms: int = FOLLOW_BLOCK_MS,
                     forecasters: list[str] | None = None) -> AsyncIterator[Prediction]:
        """New forecasts as the workers write them (from now on), in history order per symbol and
        forecaster (every served forecaster unless ``forecasters`` is given). Each read waits
        up to ``block_ms`` for news, which must stay below the client's ``READ_TIMEOUT_S``."""
        if not 0 < block_ms < READ_TIMEOUT_S * 1000:
            raise ValueError(f"block_ms must be between 0 and {READ_TIMEOUT_S * 1000:.0f}, not {block_ms}")
        keys = self.history_keys(symbols or self.settings.symbols, forecasters)
        last: dict[str, str] = {}
        for key in keys:  # start after the newest entry, so nothing between two reads is missed
            newest = await self.client.xrevrange(key, count=1)
            last[key] = newest[0][0] if newest else "0-0"
        while True:
            reply = await self.client.xread(last, block=block_ms, count=500)
            for key, entries in reply or []:
                for entry_id, fields in entries:
                    last[key] = entry_id
                    if (p := parse(fields)) is not None:
                        yield p

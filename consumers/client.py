"""A Python client for chaincast forecasts: typed records from the topic, Redis or the HTTP API.

    from chaincast.consumers.client import TopicSubscriber, RedisForecasts, ApiClient

    async for p in TopicSubscriber(settings).subscribe():   # every new forecast, as a Prediction
        print(p.symbol, p.bar_ts, p.price_hat, p.q10, p.q90)

    latest = await RedisForecasts(settings).latest()          # the latest per symbol and forecaster
    api = ApiClient("http://127.0.0.1:9480", token)           # the same over HTTP, with a token
    latest, history = await api.latest(), await api.history("BTCUSDT", limit=50)
    vol = await api.history("BTCUSDT", forecaster="volatility:h5")  # one forecaster's history

Every reader yields ``stream.records.Prediction`` (the one definition the workers write with);
a record of a newer ``schema`` than this client knows is skipped and counted, never guessed at
(the rule: ``stream/schemas.py``). ``forecaster_id(p)`` names the forecaster
(``log_return:h1``) across model versions; every ``forecaster=`` argument takes such an id
(unset: every forecaster for the latest, the default one for a history). A volatility
forecast (``target == "volatility"``) has no ``price_hat``: its ``y_hat`` and band are the
realised volatility of the next ``horizon`` one-bar log returns.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError
from websockets.asyncio.client import connect

from chaincast.stream.forecasts import ForecastReader, forecaster_id
from chaincast.stream.records import ModelUpdate, Prediction, forecaster_key, parse_forecaster
from chaincast.stream.settings import Settings

__all__ = ["ApiClient", "RedisForecasts", "TopicSubscriber", "forecaster_id"]

log = logging.getLogger(__name__)


class TopicSubscriber:
    """Forecasts from the ``predictions`` topic as they are made.

    ``group`` set: a durable subscription (offsets committed, a restart resumes, several
    processes of one group share the partitions); unset: a private reader from now (or the
    beginning) with nothing committed.
    """

    def __init__(self, settings: Settings, group: str | None = None, from_beginning: bool = False) -> None:
        if not settings.kafka_bootstrap_servers:
            raise ValueError("set KAFKA_BOOTSTRAP_SERVERS to the broker chaincast uses")
        self.settings = settings
        self.group = group
        self.from_beginning = from_beginning
        self.skipped = 0  # records this client could not read (malformed or a newer schema)

    async def subscribe(self, symbols: list[str] | None = None,
                        forecasters: list[str] | None = None) -> AsyncIterator[Prediction]:
        wanted = {s.upper() for s in symbols} if symbols else None
        kinds = {forecaster_key(*parse_forecaster(f)) for f in forecasters} if forecasters else None
        consumer = AIOKafkaConsumer(self.settings.topic_predictions,
                                    bootstrap_servers=self.settings.kafka_bootstrap_servers, group_id=self.group,
                                    auto_offset_reset="earliest" if self.from_beginning else "latest",
                                    enable_auto_commit=self.group is not None)
        await consumer.start()
        try:
            async for msg in consumer:
                try:
                    p = Prediction.loads(msg.value)
                except ValidationError as exc:
                    self.skipped += 1
                    log.warning("skipped an unreadable prediction at %s/%d: %s", msg.partition, msg.offset,
                                exc.errors()[0]["msg"])
                    continue
                if (wanted is None or p.symbol in wanted) and (kinds is None or forecaster_id(p) in kinds):
                    yield p
        finally:
            await consumer.stop()


class RedisForecasts:
    """The latest forecasts and their history, straight from Redis (the workers' own store)."""

    def __init__(self, settings: Settings) -> None:
        self.reader = ForecastReader(settings)

    async def __aenter__(self) -> RedisForecasts:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.reader.close()

    async def latest(self, symbols: list[str] | None = None, forecaster: str | None = None) -> list[Prediction]:
        return await self.reader.latest(symbols, forecaster=forecaster)

    async def history(self, symbol: str, since: int | None = None, limit: int = 100,
                      forecaster: str | None = None) -> list[Prediction]:
        return await self.reader.history(symbol.upper(), since, limit, forecaster=forecaster)

    async def follow(self, symbols: list[str] | None = None,
                     forecasters: list[str] | None = None) -> AsyncIterator[Prediction]:
        async for p in self.reader.follow(symbols, forecasters=forecasters):
            yield p


class ApiError(RuntimeError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


class ApiClient:
    """The HTTP API with a bearer token (``chaincast token create NAME``)."""

    def __init__(self, base_url: str, token: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout,
                                      headers={"Authorization": f"Bearer {token}"})

    def __repr__(self) -> str:  # never the token
        return f"ApiClient({self.base_url!r})"

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def _get(self, path: str, **params: Any) -> Any:
        resp = await self.http.get(path, params={k: v for k, v in params.items() if v is not None})
        if resp.status_code != 200:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            raise ApiError(resp.status_code, str(detail))
        return resp.json()

    async def latest(self, forecaster: str | None = None) -> list[Prediction]:
        body = await self._get("/v1/forecasts", forecaster=forecaster)
        return [Prediction.model_validate(f) for f in body["forecasts"]]

    async def history(self, symbol: str, since: int | None = None, limit: int = 100,
                      forecaster: str | None = None) -> list[Prediction]:
        body = await self._get(f"/v1/forecasts/{symbol}", since=since, limit=limit, forecaster=forecaster)
        return [Prediction.model_validate(f) for f in body["history"]]

    async def models(self) -> list[ModelUpdate]:
        return [ModelUpdate.model_validate(m) for m in (await self._get("/v1/models"))["models"]]

    async def stream(self) -> AsyncIterator[Prediction]:
        """New forecasts over the API's websocket."""
        url = self.base_url.replace("http", "ws", 1) + "/v1/stream"
        async with connect(url, additional_headers={"Authorization": f"Bearer {self._token}"}) as ws:
            hello = json.loads(await ws.recv())
            if not hello.get("ok"):
                raise ApiError(hello.get("status", 401), hello.get("error", "refused"))
            async for raw in ws:
                yield Prediction.model_validate_json(raw)

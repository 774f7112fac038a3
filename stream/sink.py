"""Everything a worker writes to Redis: one pipeline per batch, idempotent.

The keys come from ``stream.redis_layout`` (the layout is an interface, documented
in the README): predictions (latest hash + capped history stream), the serving
model's hash (written once this worker accepted the version), live scores and the
retrain flags. The default forecaster's keys carry no target (``cc:pred:{SYMBOL}``);
every other forecaster's carry its target and horizon. Nothing else in a worker writes Redis.

Redelivered predictions (at-least-once) are harmless: the stream refuses an id
it already holds, and the hash is only replaced by a newer bar.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_delay, wait_random_exponential

from chaincast.stream.records import FeePrediction, ModelUpdate, Prediction, parse_forecaster
from chaincast.stream.redis_layout import RedisLayout

log = logging.getLogger(__name__)

# Replace the latest-prediction hash only when the new one is for a later (or the same) bar.
_SET_IF_NEWER = """
local cur = redis.call('HGET', KEYS[1], 'bar_ts')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""


def _log_retry(state: RetryCallState) -> None:
    if state.attempt_number in (1, 10) or state.attempt_number % 50 == 0:
        log.warning("Redis unreachable (attempt %d, %.1fs): %s", state.attempt_number, state.seconds_since_start,
                    state.outcome.exception() if state.outcome else "")


def _fields(pred: Prediction) -> dict[str, str]:
    # A volatility forecast has no price_hat: the field is absent, not the string "None".
    return {k: str(v) for k, v in pred.model_dump(by_alias=True).items() if v is not None}


class RedisSink:
    def __init__(self, url: str, prefix: str = "cc:", maxlen: int = 10_000,
                 default_forecast: tuple[str, int] | None = None, retry_budget_s: float = 120.0) -> None:
        self.url = url
        self.keys = RedisLayout(prefix)
        self.maxlen = maxlen
        self.retry_budget_s = retry_budget_s
        self._client: aioredis.Redis | None = None
        self._set_if_newer: AsyncScript | None = None
        # (target, horizon) of the default forecaster, whose keys are cc:pred:{SYMBOL}; any other
        # forecaster's predictions go to its own keys. None: every prediction is the default's.
        self.default_forecast = default_forecast

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:  # lazily: no network work before the first write
            # A Redis outage blocks the writer (and so the agent: backpressure, Kafka keeps
            # the input) until Redis answers again, for up to ``retry_budget_s`` (``write``);
            # beyond that the error reaches the agent, which stops before acknowledging.
            self._client = aioredis.Redis.from_url(
                self.url, decode_responses=True, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
                retry_on_error=[RedisConnectionError, RedisTimeoutError], socket_connect_timeout=5.0,
                socket_timeout=30.0,
            )
            self._set_if_newer = self._client.register_script(_SET_IF_NEWER)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def ping(self) -> None:
        """One round trip (a readiness check)."""
        await self.client.ping()

    async def write(self, preds: Iterable[Prediction]) -> int:
        """Write a batch in one round trip; return how many history entries were new.

        Retried (jittered backoff) while Redis is unreachable, for ``retry_budget_s``;
        then the connection error is raised. Retrying is safe: the write is idempotent.
        """
        preds = list(preds)
        async for attempt in self._retrying():
            with attempt:
                return await self._write(preds)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def execute(self, build: Callable[[Pipeline], None]) -> list[Any]:
        """Run one transactional pipeline that ``build`` fills, with the same retry budget as ``write``."""
        async for attempt in self._retrying():
            with attempt:
                pipe = self.client.pipeline(transaction=True)
                build(pipe)
                return await pipe.execute()
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception_type((RedisConnectionError, RedisTimeoutError, OSError)),
            wait=wait_random_exponential(multiplier=0.05, max=2.0), stop=stop_after_delay(self.retry_budget_s),
            before_sleep=_log_retry, reraise=True,
        )

    async def _write(self, preds: list[Prediction]) -> int:
        """One round trip: the script is called by its hash (EVALSHA), without redis-py's check that
        the server holds it (``SCRIPT EXISTS``: a second round trip on every write). A server that
        does not hold it (restarted, flushed) answers NOSCRIPT: the script is loaded and those hash
        updates are sent again (the history entries of that round trip were written)."""
        client = self.client
        assert self._set_if_newer is not None  # set with the client
        pipe = client.pipeline(transaction=False)
        for pred in preds:
            fields = _fields(pred)
            self._latest(pipe, pred, fields)
            extra = self._extra(pred.target, pred.horizon)
            pipe.xadd(self.keys.history(pred.symbol, *extra), fields,
                      id=self.keys.history_id(pred.bar_ts, pred.horizon), maxlen=self.maxlen, approximate=True)
        if not preds:
            return 0
        results = await pipe.execute(raise_on_error=False)
        new = 0
        for res in results[1::2]:
            if isinstance(res, ResponseError):
                if "equal or smaller" not in str(res):
                    raise res
            else:
                new += 1
        unknown = [pred for pred, res in zip(preds, results[0::2]) if isinstance(res, NoScriptError)]
        for res in results[0::2]:
            if isinstance(res, Exception) and not isinstance(res, NoScriptError):
                raise res
        if unknown:
            await client.script_load(self._set_if_newer.script)
            pipe = client.pipeline(transaction=False)
            for pred in unknown:
                self._latest(pipe, pred, _fields(pred))
            await pipe.execute()
        return new

    def _latest(self, pipe: Pipeline, pred: Prediction, fields: dict[str, str]) -> None:
        """Queue the replacement of the latest-prediction hash, unless it holds a later bar."""
        assert self._set_if_newer is not None  # set with the client
        pipe.evalsha(self._set_if_newer.sha, 1, self.keys.latest(pred.symbol, *self._extra(pred.target, pred.horizon)),
                     pred.bar_ts, *[x for kv in fields.items() for x in kv])

    async def write_model(self, update: ModelUpdate) -> None:
        fields = {"version": update.version, "sha256": update.sha256, "uri": update.uri,
                  "family": update.family, "created_at": str(update.created_at)}
        fields.update({f"metric.{k}": repr(v) for k, v in update.metrics.items()})
        key = self.keys.model(update.name)
        await self.execute(lambda pipe: pipe.delete(key).hset(key, mapping=fields))

    async def write_score(self, symbol: str, fields: Mapping[str, str], *, model_name: str,
                          retrain_reason: str | None = None) -> None:
        """Replace the default forecaster's live score hash of ``symbol``; with a reason, also ask the
        retrainer of ``model_name`` for a round."""
        await self.write_scores(symbol, {None: fields}, retrain={model_name: retrain_reason} if retrain_reason else None)

    async def write_scores(self, symbol: str, hashes: Mapping[str | None, Mapping[str, str]], *,
                           retrain: Mapping[str, str] | None = None) -> None:
        """Replace the live score hash of each forecaster of ``symbol`` (``log_return:h1``; None: the default)
        in one transaction; ``retrain``: model name -> reason, each retrainer's flag to set."""
        keys = {self._score_key(symbol, forecaster): dict(fields) for forecaster, fields in hashes.items()}

        def build(pipe: Pipeline) -> None:
            for key, fields in keys.items():
                pipe.delete(key)
                pipe.hset(key, mapping=fields)
            for model_name, reason in (retrain or {}).items():
                pipe.set(self.keys.retrain_flag(model_name), reason)

        await self.execute(build)

    def _score_key(self, symbol: str, forecaster: str | None) -> str:
        if forecaster is None:
            return self.keys.score(symbol)
        target, horizon = parse_forecaster(forecaster)
        return self.keys.score(symbol, *self._extra(target, horizon))

    def _extra(self, target: str, horizon: int) -> tuple[str, int] | tuple[()]:
        """() for the default forecaster (its keys carry no target), else (target, horizon)."""
        return () if self.default_forecast in (None, (target, horizon)) else (target, horizon)

    async def write_fees(self, chain_id: int, preds: list[FeePrediction], retracted: list[FeePrediction],
                         scores: dict[str, dict[str, float]]) -> None:
        """One batch of fee forecasts in one round trip: retractions first, then the new forecasts.

        The history stream takes auto ids: a re-forecast after a reorg is for a block number
        already in it, which an id made of the block number could not express. Retried like
        ``write`` (the same budget); then the connection error is raised. A retry after a
        write that landed but whose reply was lost repeats history entries (auto ids), which
        is why the fee agent writes before it records the block: at least once, never lost.
        """
        async for attempt in self._retrying():
            with attempt:
                return await self._write_fees(chain_id, preds, retracted, scores)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _write_fees(self, chain_id: int, preds: list[FeePrediction], retracted: list[FeePrediction],
                          scores: dict[str, dict[str, float]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for p in [*retracted, *preds]:
            pipe.xadd(self.keys.fee_history(chain_id), {k: "" if v is None else str(v)
                                                        for k, v in p.model_dump(by_alias=True).items()},
                      maxlen=self.maxlen, approximate=True)
        latest: dict[str, str] = {}
        if retracted:
            latest |= {"retracted_block": str(retracted[-1].block), "retracted_hash": retracted[-1].block_hash}
        for p in preds:
            latest |= {"block": str(p.block), "block_hash": p.block_hash, "timestamp": str(p.timestamp),
                       "base_fee_gwei": repr(p.base_fee_gwei), "updated_at": str(p.created_at)}
            key = f"{p.target}.h{p.horizon}"
            for name in ("y_hat", "q10", "q90", "reference", "forecast_gwei", "forecast_q10_gwei",
                         "forecast_q90_gwei", "model_version"):
                value = getattr(p, name)
                if value is not None:
                    latest[f"{key}.{name}"] = value if isinstance(value, str) else repr(value)
        if latest:
            pipe.hset(self.keys.fee_latest(chain_id), mapping=latest)
        flat = {f"{key}.{k}": repr(v) for key, stats in scores.items() for k, v in stats.items()}
        if flat:
            pipe.hset(self.keys.fee_score(chain_id), mapping=flat)
        for res in await pipe.execute(raise_on_error=False):
            if isinstance(res, Exception):
                raise res

"""The chain producer's wire: raw JSON-RPC over web3 providers, rate-limited, retried, redacted.

Payloads come back exactly as the node sent them (``provider.make_request``, no web3
formatters), so the normaliser sees the same dicts the recorded fixtures hold and a
refused payload can be dead-lettered verbatim. Node URLs often embed API keys: every
message that leaves this module goes through ``scrub``; web3's own loggers (which
print the endpoint at INFO) get a ``RedactFilter``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import websockets
from aiolimiter import AsyncLimiter
from prometheus_client import Counter
from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, stop_after_attempt, wait_random_exponential
from web3 import AsyncHTTPProvider
from web3.exceptions import PersistentConnectionError, ProviderConnectionError, TimeExhausted, TooManyRequests

from chaincast.producers.chain_normalise import parse_quantity

log = logging.getLogger(__name__)

RPC_ERRORS = Counter("chaincast_chain_rpc_errors_total", "Failed node requests", ["method", "kind"])
RPC_RETRIES = Counter("chaincast_chain_rpc_retries_total", "Node requests retried", ["method"])

# Failures worth another attempt: the node or the network may be fine a moment later.
TRANSIENT: tuple[type[BaseException], ...] = (
    TimeoutError, asyncio.TimeoutError, OSError, aiohttp.ClientError, websockets.exceptions.WebSocketException,
    ProviderConnectionError, PersistentConnectionError, TimeExhausted, TooManyRequests,
)
# JSON-RPC error codes providers use for rate limits and overload (-32005 "limit exceeded", 429).
RETRYABLE_CODES = frozenset({-32005, -32603, 429, -32029})

Request = Callable[[Any, Any], Awaitable[Any]]


def redact(url: str | None) -> str:
    """A node URL safe to log: scheme, host and port only.

    >>> redact("https://mainnet.infura.io/v3/0123456789abcdef")
    'https://mainnet.infura.io/***'
    >>> redact("wss://user:pw@eth.example:8546/ws?key=s3cret")
    'wss://***@eth.example:8546/***'
    >>> redact("http://127.0.0.1:8545")
    'http://127.0.0.1:8545'
    >>> redact("not a url")
    '***'
    """
    if not url:
        return ""
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        return "***"
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    auth = "***@" if parts.username or parts.password else ""
    tail = "/***" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{auth}{host}{tail}"


def _secrets(url: str) -> list[str]:
    """The pieces of a URL that may be keys: userinfo, long path segments, query values."""
    parts = urlsplit(url)
    found = [p for p in (parts.username, parts.password) if p]
    found += [seg for seg in parts.path.split("/") if len(seg) >= 8]
    found += [kv.split("=", 1)[-1] for kv in parts.query.split("&") if len(kv.split("=", 1)[-1]) >= 6]
    if parts.fragment:
        found.append(parts.fragment)
    return found


def scrub(text: str, *urls: str | None) -> str:
    """``text`` with each URL (and any key-like piece of it) replaced by its redacted form.

    >>> scrub("401 for url='https://h.io/v2/SECRETKEY123'", "https://h.io/v2/SECRETKEY123")
    "401 for url='https://h.io/***'"
    """
    for url in urls:
        if not url:
            continue
        text = text.replace(url, redact(url)).replace(url.rstrip("/"), redact(url))
        for secret in _secrets(url):
            text = text.replace(secret, "***")
    return text


class RedactFilter(logging.Filter):
    """Scrubs node URLs out of log records of loggers we do not own (web3's)."""

    def __init__(self, *urls: str | None) -> None:
        super().__init__()
        self.urls = tuple(u for u in urls if u)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(str(record.msg), *self.urls)
        if isinstance(record.args, tuple):
            record.args = tuple(scrub(a, *self.urls) if isinstance(a, str) else
                                scrub(str(a), *self.urls) if not isinstance(a, (int, float)) else a
                                for a in record.args)
        if record.exc_info:  # tracebacks carry exception messages, which carry URLs
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info), *self.urls)
            record.exc_info = None
        return True


def guard_web3_logging(*urls: str | None) -> None:
    """Install a RedactFilter on every web3 logger that exists now (call after building a provider)."""
    flt = RedactFilter(*urls)
    names = [n for n in logging.root.manager.loggerDict if n == "web3" or n.startswith("web3.")]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactFilter) and f.urls == flt.urls for f in logger.filters):
            logger.addFilter(flt)


def http_url_for(url: str) -> str:
    """The polling URL for a websocket URL: ws -> http, wss -> https (same host, path, key)."""
    if url.startswith("wss://"):
        return "https://" + url[len("wss://"):]
    if url.startswith("ws://"):
        return "http://" + url[len("ws://"):]
    return url


def http_provider(url: str, timeout: float) -> AsyncHTTPProvider:
    """web3's HTTP provider with its own retries off: ours count them and back off with jitter."""
    provider = AsyncHTTPProvider(
        url, request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout)}, exception_retry_configuration=None
    )
    guard_web3_logging(url)
    return provider


class RpcError(RuntimeError):
    """The node answered with an error we do not retry, or did not answer in time. Message is scrubbed."""

    def __init__(self, method: str, message: str) -> None:
        super().__init__(f"{method}: {message}")
        self.method = method


class RpcUnavailable(RpcError):
    """Every attempt failed on transport (timeouts, dropped connections, rate limits)."""


def rate_limiter(rps: float) -> AsyncLimiter | None:
    """At most ``rps`` requests per second, spaced evenly: a bucket of one (paid providers count
    every call, so no bursts); None for no limit (``rps`` 0).

    >>> rate_limiter(0) is None, rate_limiter(4.0).time_period, rate_limiter(4.0).max_rate
    (True, 0.25, 1)
    """
    return AsyncLimiter(1, 1.0 / rps) if rps > 0 else None


def _kind(exc: BaseException) -> str:
    """A bounded metric label for a transport failure."""
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, TimeExhausted)):
        return "timeout"
    if isinstance(exc, TooManyRequests) or (isinstance(exc, aiohttp.ClientResponseError) and exc.status == 429):
        return "rate_limited"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "http_status"
    return "connection"


class _Retryable(Exception):
    """One attempt failed in a way worth another (transport, or a rate-limit/overload code)."""


class NodeClient:
    """JSON-RPC calls through one provider's ``make_request``: bounded concurrency, a
    requests-per-second limit (aiolimiter), jittered exponential retries of transient
    failures (tenacity)."""

    def __init__(self, request: Request, *, url: str, rps: float, concurrency: int, retries: int,
                 backoff: float = 0.2, limiter: AsyncLimiter | None = None) -> None:
        self._request = request
        self._url = url
        self._limiter = limiter or rate_limiter(rps)
        self._slots = asyncio.Semaphore(concurrency)
        self._retries = retries
        self._backoff = backoff

    async def call(self, method: str, params: list[Any]) -> Any:
        """The ``result`` of one call (may be None: e.g. a block the node does not have)."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retries),
            wait=wait_random_exponential(multiplier=self._backoff, max=30.0),  # full jitter: clients spread out
            retry=retry_if_exception_type(_Retryable),
            before_sleep=lambda _state: RPC_RETRIES.labels(method).inc(),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(method, params)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise RpcUnavailable(method, f"{self._retries} attempts failed; last: {last}") from None
        raise AssertionError("unreachable: tenacity either returns, raises or gives up")

    async def _attempt(self, method: str, params: list[Any]) -> Any:
        async with self._slots:
            if self._limiter is not None:
                await self._limiter.acquire()
            try:
                response = await self._request(method, params)
            except TRANSIENT as exc:
                RPC_ERRORS.labels(method, _kind(exc)).inc()
                raise _Retryable(f"{type(exc).__name__}: {scrub(str(exc), self._url)}") from None
        if not isinstance(response, Mapping) or ("result" not in response and "error" not in response):
            RPC_ERRORS.labels(method, "malformed").inc()
            raise RpcError(method, f"malformed response {scrub(repr(response)[:200], self._url)}")
        error = response.get("error")
        if error is None:
            return response.get("result")
        code = error.get("code") if isinstance(error, Mapping) else None
        message = scrub(str(error.get("message") if isinstance(error, Mapping) else error), self._url)
        RPC_ERRORS.labels(method, "rpc_error").inc()
        if code not in RETRYABLE_CODES:
            raise RpcError(method, f"node error {code}: {message}")
        raise _Retryable(f"node error {code}: {message}")

    async def chain_id(self) -> int:
        return parse_quantity(await self.call("eth_chainId", []), "eth_chainId")

    async def block_number(self) -> int:
        return parse_quantity(await self.call("eth_blockNumber", []), "eth_blockNumber")

    async def block(self, number: int | str, full: bool = True) -> Any:
        """The raw block payload by number or tag ("latest", "finalized"), or None."""
        tag = hex(number) if isinstance(number, int) else number
        return await self.call("eth_getBlockByNumber", [tag, full])

"""The wire: redaction, the rate limiter, retries and errors against real endpoints."""

from __future__ import annotations

import asyncio
import logging

import pytest

from chaincast.deploy.embedded import free_port
from chaincast.producers.chain import depth_label
from chaincast.producers.chain_node import (
    RPC_ERRORS, RPC_RETRIES, NodeClient, RedactFilter, RpcError, RpcUnavailable, http_provider,
    http_url_for, rate_limiter, redact, scrub,
)

KEYED = [
    "https://mainnet.infura.io/v3/0123456789abcdef0123456789abcdef",
    "wss://eth-mainnet.g.alchemy.com/v2/AbCdEfGhIjKlMnOp",
    "https://user:hunter22@rpc.example.org:8545/",
    "https://rpc.example.org/?apikey=s3cr3tvalue",
]


@pytest.mark.parametrize("url", KEYED)
def test_redact_keeps_only_scheme_host_and_port(url: str) -> None:
    out = redact(url)
    assert out.split("://")[0] == url.split("://")[0]
    for secret in ("0123456789abcdef", "AbCdEfGhIjKlMnOp", "hunter22", "s3cr3tvalue", "user"):
        assert secret not in out


@pytest.mark.parametrize("url", KEYED)
def test_scrub_removes_keys_from_error_text(url: str) -> None:
    text = f"ClientResponseError: 401, message='Unauthorized', url='{url}' (key {url.rsplit('/', 1)[-1]})"
    out = scrub(text, url)
    for secret in ("0123456789abcdef", "AbCdEfGhIjKlMnOp", "hunter22", "s3cr3tvalue"):
        assert secret not in out
    assert redact(url) in out


def test_redact_filter_scrubs_args_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    url = KEYED[0]
    logger = logging.getLogger("test.redact")
    logger.addFilter(RedactFilter(url))
    with caplog.at_level(logging.INFO, logger="test.redact"):
        logger.info("Connecting to: %s", url)
        try:
            raise ConnectionError(f"cannot reach {url}")
        except ConnectionError:
            logger.exception("failed")
    assert "0123456789abcdef" not in caplog.text
    assert "https://mainnet.infura.io/***" in caplog.text


def test_ws_url_maps_to_its_http_twin() -> None:
    assert http_url_for("wss://h.io/v3/k") == "https://h.io/v3/k"
    assert http_url_for("ws://127.0.0.1:8545") == "http://127.0.0.1:8545"
    assert http_url_for("http://127.0.0.1:8545") == "http://127.0.0.1:8545"


async def test_rate_limiter_allows_no_burst() -> None:
    limiter = rate_limiter(0.01)  # one request per 100 s: nothing refills during the test
    await limiter.acquire()
    assert not limiter.has_capacity()  # the second request of a burst would wait its turn
    assert rate_limiter(0) is None


def test_depth_labels_are_bounded() -> None:
    assert {depth_label(d) for d in range(1, 500)} == {"1", "2", "3", "4", "5-8", "9-64", "65+"}


async def test_unreachable_node_is_retried_then_unavailable_and_the_key_stays_hidden() -> None:
    url = f"http://127.0.0.1:{free_port()}/v3/SECRETKEY0123456789"  # nothing listens there
    provider = http_provider(url, timeout=2.0)
    node = NodeClient(provider.make_request, url=url, rps=0, concurrency=2, retries=3, backoff=0.01)
    before = RPC_RETRIES.labels("eth_blockNumber")._value.get()
    errors = RPC_ERRORS.labels("eth_blockNumber", "connection")._value.get()
    try:
        with pytest.raises(RpcUnavailable) as caught:
            await node.block_number()
    finally:
        await provider.disconnect()
    assert "3 attempts failed" in str(caught.value) and "SECRETKEY" not in str(caught.value)
    assert RPC_RETRIES.labels("eth_blockNumber")._value.get() - before == 2
    assert RPC_ERRORS.labels("eth_blockNumber", "connection")._value.get() - errors == 3


async def test_node_errors_are_not_retried(tmp_path) -> None:
    from chaincast.deploy.hardhat import start_hardhat

    proc, http_url, _ = start_hardhat(tmp_path)
    provider = http_provider(http_url, timeout=5.0)
    node = NodeClient(provider.make_request, url=http_url, rps=0, concurrency=2, retries=3)
    try:
        assert await node.chain_id() == 31337
        assert await node.block(10**6) is None  # a block the node does not have: None, not an error
        with pytest.raises(RpcError, match="eth_noSuchMethod: node error") as caught:
            await node.call("eth_noSuchMethod", [])
        assert not isinstance(caught.value, RpcUnavailable)
    finally:
        await provider.disconnect()
        proc.stop()

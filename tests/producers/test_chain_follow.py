"""The follower against a real Hardhat node and the real embedded broker.

A live dev chain (interval mining), reorgs of depth 1-3 made with evm_snapshot /
evm_revert and re-mining at other timestamps, a follower restart across a reorg
and a gap: chain.blocks must then hold every canonical block exactly once and a
retraction for every orphaned block, each after the block and before its replacement.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from chaincast.deploy.hardhat import rpc, set_interval_mining, start_hardhat
from chaincast.producers.chain import ChainFollower, follow_chain
from chaincast.stream.publish import Publisher
from chaincast.stream.records import Block, DeadLetter, Tx
from chaincast.stream.topics import ensure_topics

REPO = Path(__file__).resolve().parents[2]
WAIT = 60.0  # a bound on each wait, not a timing assertion


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    proc, http_url, ws_url = start_hardhat(tmp_path_factory.mktemp("hardhat"))
    try:
        yield http_url, ws_url
    finally:
        proc.stop()


def head(url: str) -> dict:
    return rpc(url, "eth_getBlockByNumber", ["latest", False])


def mine(url: str, n: int, gap: int = 1) -> None:
    """n blocks, each ``gap`` seconds after the last: a re-mined branch with another gap has
    other timestamps, so other hashes (a real fork, not the same blocks mined again).
    One request per block: hardhat may run a batch's calls out of order."""
    ts = int(head(url)["timestamp"], 16)
    for i in range(n):
        rpc(url, "evm_mine", [ts + gap * (i + 1)])


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


def caught_up(follower: ChainFollower, url: str) -> Callable[[], bool]:
    want = head(url)["hash"]
    return lambda: follower.tip is not None and follower.tip.hash == want


async def read_topic(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + WAIT
        while len(values) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                values += [r.value for r in records]
        for records in (await consumer.getmany(timeout_ms=1000)).values():  # anything extra is a duplicate
            values += [r.value for r in records]
    finally:
        await consumer.stop()
    return values


async def start(settings, url: str) -> tuple[Publisher, ChainFollower, asyncio.Task]:
    publisher = Publisher(settings)
    await publisher.start()
    follower = ChainFollower(settings, publisher, node_url=url)
    return publisher, follower, asyncio.create_task(follower.run())


async def stop(publisher: Publisher, follower: ChainFollower, task: asyncio.Task) -> None:
    follower.stop()
    await asyncio.wait_for(task, WAIT)
    await publisher.stop()


async def reorg(url: str, follower: ChainFollower, depth: int) -> None:
    """Mine ``depth`` blocks, let the follower publish them, then replace them with depth + 1 others."""
    snapshot = rpc(url, "evm_snapshot")
    mine(url, depth)
    await until(caught_up(follower, url), f"the follower to reach the branch of depth {depth}")
    assert rpc(url, "evm_revert", [snapshot])
    mine(url, depth + 1, gap=7)
    await until(caught_up(follower, url), f"the follower to follow the reorg of depth {depth}")


async def test_follows_live_chain_reorgs_and_restart(chain, settings_for, broker) -> None:
    http_url, ws_url = chain
    settings = settings_for(CHAINCAST_CHAIN_FROM_BLOCK="0", CHAINCAST_CHAIN_RPS="0", CHAINCAST_CHAIN_REORG_DEPTH="16")
    await ensure_topics(settings)
    mine(http_url, 5)

    publisher, first, task = await start(settings, ws_url)
    await until(caught_up(first, http_url), "the initial backfill")
    set_interval_mining(http_url, 150)  # a live head
    live_from = first.tip.number
    await until(lambda: first.tip.number >= live_from + 5, "five live blocks")
    set_interval_mining(http_url, 0)
    await until(caught_up(first, http_url), "the live head")
    for depth in (1, 2, 3):
        await reorg(http_url, first, depth)
    # A reorg the follower sleeps through: its tip is orphaned while it is down.
    snapshot = rpc(http_url, "evm_snapshot")
    mine(http_url, 2)
    await until(caught_up(first, http_url), "the branch before the restart")
    await stop(publisher, first, task)
    assert rpc(http_url, "evm_revert", [snapshot])
    mine(http_url, 12, gap=7)

    publisher, second, task = await start(settings, ws_url)  # same settings: same cursor file
    await until(caught_up(second, http_url), "the backfill after the restart")
    await stop(publisher, second, task)

    assert first.reorgs == [1, 2, 3] and second.reorgs == [2]
    total = sum(f.published["canonical"] + f.published["retraction"] for f in (first, second))
    records = [Block.loads(v) for v in await read_topic(broker, settings.topic_blocks, total)]
    assert len(records) == total
    assert_chain_log(records, http_url, second.tip.number)


def assert_chain_log(records: list[Block], url: str, last: int) -> None:
    canonical = {n: rpc(url, "eth_getBlockByNumber", [hex(n), False])["hash"] for n in range(last + 1)}
    published = Counter(r.hash for r in records if not r.reorged)
    retracted = Counter(r.hash for r in records if r.reorged)
    assert all(published[h] == 1 for h in canonical.values()), "every canonical block exactly once"
    assert not set(retracted) & set(canonical.values()), "no canonical block retracted"
    orphans = set(published) - set(canonical.values())
    assert len(orphans) == 1 + 2 + 3 + 2 and retracted == Counter(orphans), "each orphan retracted once"
    position = {(r.hash, r.reorged): i for i, r in enumerate(records)}
    for r in records:
        if r.reorged:
            replacement = position[(canonical[r.number], False)]
            assert position[(r.hash, False)] < position[(r.hash, True)] < replacement


async def test_cli_polls_http_exports_txs_and_never_prints_the_key(chain, settings_for, broker) -> None:
    http_url, _ = chain
    senders = ["0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266", "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"]
    sent = [rpc(http_url, "eth_sendTransaction", [{"from": senders[i % 2], "to": senders[(i + 1) % 2],
                                                   "value": hex(10**18 + 12345 * i)}]) for i in range(4)]
    first = int(rpc(http_url, "eth_getTransactionByHash", [sent[0]])["blockNumber"], 16)
    secret = "SECRETKEY0123456789abcdef"
    settings = settings_for(CHAINCAST_LOG_LEVEL="DEBUG", CHAINCAST_CHAIN_POLL_INTERVAL="0.2")
    await ensure_topics(settings)
    done = subprocess.run(
        [sys.executable, "-m", "chaincast.deploy.chain_cli", "chain", "--node", f"{http_url}/v3/{secret}",
         "--from-block", str(first), "--txs", "--duration", "3"],
        env={**os.environ, **settings.env()}, cwd=REPO, capture_output=True, text=True, timeout=WAIT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert secret not in done.stdout + done.stderr
    assert "Successfully disconnected from: http://127.0.0.1" in done.stderr  # web3's own log, scrubbed
    assert "published " in done.stdout and " 4 txs" in done.stdout
    txs = [Tx.loads(v) for v in await read_topic(broker, settings.topic_txs, 4)]
    assert [t.hash for t in txs] == sent
    assert [t.value for t in txs] == [10**18 + 12345 * i for i in range(4)]


async def test_self_contradicting_node_is_dead_lettered_not_looped(settings_for, broker, tmp_path) -> None:
    """hardhat_mine's reserved blocks report a zero parentHash: a real node returning a chain
    that does not link. The follower dead-letters it once and waits; it neither crashes nor
    retracts good blocks."""
    proc, http_url, _ = start_hardhat(tmp_path / "hardhat")
    try:
        rpc(http_url, "hardhat_mine", ["0x10"])  # > a few: later ones are reserved
        settings = settings_for(CHAINCAST_CHAIN_FROM_BLOCK="0", CHAINCAST_CHAIN_POLL_INTERVAL="0.1")
        await ensure_topics(settings)  # before the consumer subscribes
        stop = asyncio.Event()
        run = asyncio.create_task(follow_chain(settings, node_url=http_url, stop=stop))
        letters = [DeadLetter.loads(v) for v in await read_topic(broker, settings.topic_deadletter, 1)]
        stop.set()  # read_topic lingered a second more: ten polls, which must not dead-letter again
        follower = await asyncio.wait_for(run, WAIT)
    finally:
        proc.stop()
    assert [d.reason.split(":")[0] for d in letters] == ["inconsistent chain"]
    assert follower.reorgs == [] and follower.published["retraction"] == 0
    assert follower.tip is not None and follower.tip.number == 2  # the last block that links

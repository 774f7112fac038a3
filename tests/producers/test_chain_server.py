"""The replay node serves real mainnet blocks over JSON-RPC; the real follower follows it, reorgs included."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import aiohttp
import numpy as np
import pytest

from chaincast.models.blocks import BASE_FEE, load_blocks
from chaincast.producers.chain import ChainFollower
from chaincast.producers.chain_normalise import normalise_block
from chaincast.producers.chain_server import ReplayNode
from chaincast.stream.publish import Publisher
from chaincast.stream.records import Block
from chaincast.stream.topics import ensure_topics
from tests.conftest import TEST_DATA

BLOCKS = TEST_DATA / "chain" / "mainnet_blocks_18640000_18643999.csv.gz"
WAIT = 120.0  # a bound on each wait, not a timing assertion


def blocks(n: int = 300) -> np.ndarray:
    return load_blocks(BLOCKS).blocks[:n]


async def rpc(session: aiohttp.ClientSession, url: str, method: str, params: list) -> dict:
    async with session.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}) as r:
        return await r.json()


def test_http_json_rpc_serves_real_blocks_that_normalise() -> None:
    data = blocks()

    async def run() -> None:
        async with ReplayNode(data, speed=None, start=int(data[10, 0])) as node:
            await node.finished.wait()
            async with aiohttp.ClientSession() as s:
                assert (await rpc(s, node.url, "eth_chainId", []))["result"] == "0x1"
                assert int((await rpc(s, node.url, "eth_blockNumber", []))["result"], 16) == int(data[-1, 0])
                genesis = (await rpc(s, node.url, "eth_getBlockByNumber", ["0x0", False]))["result"]
                assert genesis["number"] == "0x0"
                raw = (await rpc(s, node.url, "eth_getBlockByNumber", [hex(int(data[5, 0])), True]))["result"]
                block = normalise_block(raw, 1)
                assert block.base_fee == int(data[5, BASE_FEE]) and block.number == int(data[5, 0])
                parent = (await rpc(s, node.url, "eth_getBlockByNumber", [hex(int(data[4, 0])), False]))["result"]
                assert block.parent_hash == parent["hash"]
                assert (await rpc(s, node.url, "eth_getBlockByNumber", [hex(int(data[-1, 0]) + 1), False]))[
                    "result"] is None
                bad = await rpc(s, node.url, "eth_getBlockByNumber", ["0xzz", False])
                assert bad["error"]["code"] == -32602
                unknown = await rpc(s, node.url, "eth_sendRawTransaction", ["0x00"])
                assert unknown["error"]["code"] == -32601
                async with s.post(node.url, data=b"{not json") as r:
                    assert (await r.json())["error"]["code"] == -32700

    asyncio.run(run())


def test_websocket_newheads_follow_the_clock_and_reorgs_fork_the_newest_blocks() -> None:
    data = blocks(80)

    async def run() -> None:
        async with ReplayNode(data, speed=600.0, start=int(data[0, 0]), reorg_every=4) as node:
            async with aiohttp.ClientSession() as s, s.ws_connect(node.ws_url) as ws:
                await ws.send_json({"jsonrpc": "2.0", "id": 7, "method": "eth_subscribe", "params": ["newHeads"]})
                sub = (await ws.receive_json(timeout=WAIT))["result"]
                heads = []
                while len(heads) < 12:
                    msg = await ws.receive_json(timeout=WAIT)
                    assert msg["params"]["subscription"] == sub
                    heads.append(msg["params"]["result"])
            numbers = [int(h["number"], 16) for h in heads]
            assert numbers == list(range(numbers[0], numbers[0] + 12))
            assert node.reorgs and {d for _, d in node.reorgs} <= {1, 2, 3}
            # a head right after a reorg names a parent other than the head before it
            by_number = {int(h["number"], 16): h for h in heads}
            forked = [n for n, _ in node.reorgs if n - 1 in by_number and n in by_number]
            assert forked and all(by_number[n]["parentHash"] != by_number[n - 1]["hash"] for n in forked)

    asyncio.run(run())


def test_the_real_follower_retracts_what_the_replay_node_reorgs(settings_for) -> None:
    data = blocks(400)
    settings = settings_for(CHAINCAST_CHAIN_RPS="0")
    first = int(data[0, 0])

    async def run() -> list[Block]:
        await ensure_topics(settings)
        async with ReplayNode(data, speed=240.0, start=first + 2, reorg_every=5) as node:
            async with Publisher(settings) as publisher:
                follower = ChainFollower(settings, publisher, node_url=node.ws_url)
                task = asyncio.create_task(follower.run())
                deadline = time.monotonic() + WAIT
                while sum(1 for _ in follower.reorgs) < 3 and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                follower.stop()
                await task
            assert len(follower.reorgs) >= 3, f"followed reorgs {follower.reorgs} of {node.reorgs}"
        from tests.integration.conftest import read_topic

        msgs = await read_topic(settings, settings.topic_blocks,
                                lambda m: len(m) >= follower.published["canonical"] + follower.published["retraction"])
        return [Block.loads(m.value) for m in msgs]

    records = asyncio.run(run())
    retracted = [b for b in records if b.reorged]
    canonical = [b for b in records if not b.reorged]
    assert retracted
    live = {}
    for b in records:  # replaying the topic: a retraction removes its block
        if b.reorged:
            assert live.pop(b.number).hash == b.hash
        else:
            assert b.number not in live
            live[b.number] = b
    numbers = sorted(live)
    assert numbers == list(range(numbers[0], numbers[-1] + 1))
    assert all(live[n].parent_hash == live[n - 1].hash for n in numbers[1:])
    assert Counter(b.hash for b in canonical).most_common(1)[0][1] == 1

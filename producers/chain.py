"""The web3 block follower: new heads in, Block (and Tx) records out, reorgs retracted.

One loop (ethereum-etl's streamer, plus reorgs): on every new head (a websocket
``newHeads`` notification, or a poll tick over HTTP) ``sync`` publishes every block
from the cursor up to the target (head minus the confirmation depth, or the
``finalized`` block), in order. A block whose parent is not our tip means the chain
forked: walk back through the last K blocks to the common ancestor, publish each
orphaned block again with ``reorged=true`` (newest first), then the new canonical
blocks. The cursor (the last K blocks) is saved after the broker acknowledged them,
so a restart or a dropped socket resumes with an in-order backfill.

The wire (``chain_node``) and the normaliser (``chain_normalise``) are separate; this
module decides what to fetch and what to publish.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge
from web3 import AsyncWeb3, WebSocketProvider

from chaincast.producers.chain_node import (
    TRANSIENT, NodeClient, RpcError, RpcUnavailable, guard_web3_logging, http_provider, http_url_for, redact, scrub,
)
from chaincast.producers.chain_normalise import MalformedPayload, normalise_block, normalise_txs, parse_hash, parse_quantity
from chaincast.producers.cursor import BlockWindow, CursorFile
from chaincast.stream.health import HEALTH
from chaincast.stream.publish import Publisher
from chaincast.stream.records import Block
from chaincast.stream.settings import Settings
from chaincast.stream.topics import ensure_topics

log = logging.getLogger(__name__)

SOURCE = "producer.chain"
WS_FAILURES_BEFORE_POLLING = 3

BLOCKS_PUBLISHED = Counter("chaincast_chain_blocks_published_total", "Block records published", ["kind"])
REORGS = Counter("chaincast_chain_reorgs_total", "Reorgs followed, by depth (orphaned blocks)", ["depth"])
BACKFILLED = Counter("chaincast_chain_backfilled_blocks_total", "Blocks published while catching up to the head")
TXS_PUBLISHED = Counter("chaincast_chain_txs_published_total", "Tx records published")
HEAD_LAG = Gauge("chaincast_chain_head_lag_seconds", "Wall clock minus the timestamp of the last published block")
LAST_BLOCK = Gauge("chaincast_chain_last_block", "Number of the last published canonical block")

T = TypeVar("T")


def depth_label(depth: int) -> str:
    """A bounded label: 1..4 exactly, then ranges."""
    return str(depth) if depth <= 4 else "5-8" if depth <= 8 else "9-64" if depth <= 64 else "65+"


class _Stopped(Exception):
    """The stop event fired while we waited."""


class ChainFollower:
    """Follows one node. ``run()`` until ``stop()`` (or the duration); never raises on bad input."""

    def __init__(self, settings: Settings, publisher: Publisher, *, node_url: str | None = None,
                 cursor_path: Path | None = None) -> None:
        self.settings = settings
        self.publisher = publisher
        self.url = node_url or settings.node_url
        if not self.url:
            raise ValueError("no node URL: pass --node or set CHAINCAST_NODE_URL")
        is_ws = self.url.startswith(("ws://", "wss://"))
        self.ws_url = self.url if is_ws else None
        self.http_url = settings.node_http_url or http_url_for(self.url)
        self.cursor_path = cursor_path
        self.window = BlockWindow(settings.chain_reorg_depth)
        self.chain_id: int | None = None
        self.genesis_hash: str | None = None
        self._cursor: CursorFile | None = None
        self._stop = asyncio.Event()
        self._dead_lettered: tuple[int | str, str] | None = None  # don't flood on a block we keep refusing
        self.reorgs: list[int] = []  # depths, for the CLI summary and tests
        self.published = {"canonical": 0, "retraction": 0, "txs": 0}

    # -- lifecycle ---------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    @property
    def tip(self) -> Block | None:
        return self.window.tip

    async def run(self, duration: float | None = None) -> None:
        """Follow until stopped: websocket heads, or HTTP polling when there is no socket
        or it keeps failing; reconnect with jittered backoff on transport errors."""
        if duration is not None:
            asyncio.get_running_loop().call_later(duration, self._stop.set)
        ws_failures = 0
        delay = 0.5
        while not self._stop.is_set():
            use_ws = self.ws_url is not None and ws_failures < WS_FAILURES_BEFORE_POLLING
            progress = self.published["canonical"]
            try:
                if use_ws:
                    await self._follow_ws()
                else:
                    await self._follow_http()
                return
            except _Stopped:
                return
            except (RpcError, MalformedPayload, *TRANSIENT) as exc:  # the node, not us: back off, retry
                if self.published["canonical"] > progress:  # a session that worked: failures start over
                    ws_failures, delay = 0, 0.5
                if use_ws:
                    ws_failures += 1
                    if ws_failures == WS_FAILURES_BEFORE_POLLING:
                        log.warning("websocket failed %d times; polling %s instead", ws_failures,
                                    redact(self.http_url))
                log.warning("node connection lost (%s: %s); reconnecting in %.1fs", type(exc).__name__,
                            scrub(str(exc), self.url, self.http_url), delay)
            try:
                await self._wait(asyncio.sleep(delay * random.uniform(0.5, 1.5)))
            except _Stopped:
                return
            delay = min(delay * 2, 30.0)

    def _client(self, request: Any, url: str) -> NodeClient:
        s = self.settings
        return NodeClient(request, url=url, rps=s.chain_rps, concurrency=s.chain_concurrency,
                          retries=s.chain_retries)

    async def _follow_ws(self) -> None:
        assert self.ws_url is not None
        provider = WebSocketProvider(self.ws_url, request_timeout=self.settings.chain_request_timeout,
                                     max_connection_retries=1)
        guard_web3_logging(self.ws_url)
        async with AsyncWeb3(provider) as w3:
            node = self._client(provider.make_request, self.ws_url)
            await self._resume(node)
            await w3.eth.subscribe("newHeads")
            log.info("following %s over a websocket", redact(self.ws_url))
            await self.sync(node)
            heads = w3.socket.process_subscriptions()
            while True:
                message = await self._wait(anext(heads))
                await self.sync(node, _head_hint(message))

    async def _follow_http(self) -> None:
        provider = http_provider(self.http_url, self.settings.chain_request_timeout)
        try:
            node = self._client(provider.make_request, self.http_url)
            await self._resume(node)
            log.info("polling %s every %.1fs", redact(self.http_url), self.settings.chain_poll_interval)
            while True:
                await self.sync(node)
                await self._wait(asyncio.sleep(self.settings.chain_poll_interval))
        finally:
            await provider.disconnect()

    async def _wait(self, aw: Awaitable[T]) -> T:
        """``aw``, unless the stop event fires first (then _Stopped)."""
        task = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise _Stopped

    # -- cursor --------------------------------------------------------------------

    async def _resume(self, node: NodeClient) -> None:
        """Identify the chain; load the cursor once, unless it belongs to another chain."""
        if self.chain_id is not None:
            return  # a reconnect: the window in memory is the cursor
        chain_id = await node.chain_id()
        genesis = await node.block(0, False)
        if not isinstance(genesis, Mapping):
            raise RpcError("eth_getBlockByNumber", "the node has no genesis block")
        genesis_hash = parse_hash(genesis.get("hash"), "genesis hash")
        path = self.cursor_path or self.settings.home / "chain" / f"cursor-{chain_id}-{self.settings.topic_blocks}.json"
        self._cursor = CursorFile(path)
        saved = self._cursor.load()
        if saved is not None and (saved.chain_id, saved.genesis_hash) != (chain_id, genesis_hash):
            log.warning("cursor %s is for another chain (chain %d, genesis %s); starting fresh",
                        path, saved.chain_id, saved.genesis_hash[:10])
            saved = None
        if saved is not None:
            self.window = BlockWindow(self.settings.chain_reorg_depth, saved.blocks)
            log.info("resuming after block %s", self.window.tip.number if self.window.tip else None)
        self.chain_id, self.genesis_hash = chain_id, genesis_hash

    def _save(self) -> None:
        assert self._cursor is not None and self.chain_id is not None and self.genesis_hash is not None
        self._cursor.save(self.chain_id, self.genesis_hash, self.window)

    # -- the sync step ---------------------------------------------------------------

    async def _target(self, node: NodeClient, head: tuple[int, str] | None) -> int:
        confirmations = self.settings.chain_confirmations
        if confirmations == "finalized":
            block = await node.block("finalized", False)
            if not isinstance(block, Mapping):
                raise MalformedPayload("finalized block: null")
            return parse_quantity(block.get("number"), "finalized number")
        number = head[0] if head is not None else await node.block_number()
        return max(0, number - confirmations)

    async def sync(self, node: NodeClient, head: tuple[int, str] | None = None) -> None:
        """Publish everything up to the current target; retract what a reorg orphaned."""
        if head is not None and self.settings.chain_confirmations == 0 and self.window.hash_at(head[0]) == head[1]:
            return  # a head we already published (or a lagging node's stale one)
        try:
            target = await self._target(node, head)
            await self._sync_to(node, target)
        except MalformedPayload as exc:
            await self._refuse(None, str(exc), key="target")
        except RpcError as exc:
            if isinstance(exc, RpcUnavailable):
                raise
            log.warning("node refused a request (%s); trying again at the next head", exc)

    async def _sync_to(self, node: NodeClient, target: int) -> None:
        tip = self.window.tip
        if tip is None:
            start = self.settings.chain_from_block
            await self._publish_range(node, target if start is None else min(start, target), target)
            return
        start = tip.number + 1
        if target <= tip.number:
            if target < (self.window.low or 0):
                log.warning("the node's target %d is more than %d blocks behind our cursor; waiting",
                            target, self.window.size)
                return
            block = await self._normalise(await node.block(target), target)
            if block is None or self.window.hash_at(target) == block.hash:
                return  # nothing new, or a node lagging behind the cursor: keep ours
            ancestor = await self._reorg(node, block)
            if ancestor is None:
                return
            start = ancestor + 1
        await self._publish_range(node, start, target)

    async def _publish_range(self, node: NodeClient, start: int, end: int) -> None:
        """Fetch ``start..end`` (concurrently, bounded by the client) and publish in order.
        A broken parent link mid-way is a reorg: follow it, then carry on to ``end``."""
        chunk = max(16, self.settings.chain_concurrency * 4)
        number = start
        while number <= end and not self._stop.is_set():
            numbers = range(number, min(end, number + chunk - 1) + 1)
            payloads = await asyncio.gather(*(node.block(n) for n in numbers))
            published, next_number = 0, numbers[-1] + 1
            for n, payload in zip(numbers, payloads):
                block = await self._normalise(payload, n)
                if block is None:
                    next_number = end + 1  # not on the node yet, or refused: the next head retries
                    break
                tip = self.window.tip
                if tip is not None and block.parent_hash != tip.hash:
                    ancestor = await self._reorg(node, block)
                    next_number = end + 1 if ancestor is None else ancestor + 1
                    break
                await self._publish(payload, block, backfill=n < end)
                published += 1
            if published:
                await self.publisher.flush()
                self._save()
            number = next_number

    async def _reorg(self, node: NodeClient, block: Block) -> int | None:
        """``block`` does not extend our chain: walk back to the common ancestor, retract
        every block above it (newest first); return the ancestor's number, or None when
        the node contradicts itself (then nothing is retracted and the next head retries)."""
        n, child = block.number - 1, block
        while self.window.hash_at(n) is not None and self.window.hash_at(n) != child.parent_hash:
            fetched = await self._normalise(await node.block(n), n)
            if fetched is None:
                raise RpcError("eth_getBlockByNumber", f"block {n} vanished during a reorg walk")
            if child is block and fetched.hash == self.window.hash_at(n):
                # The node still has our block n, yet says block n+1 has another parent.
                await self._refuse(None, f"inconsistent chain: block {block.number} parentHash "
                                   f"{block.parent_hash[:18]} is not the node's block {n}", key=block.number)
                return None
            child, n = fetched, n - 1
        if self.window.hash_at(n) is None:
            log.error("reorg deeper than the %d blocks kept: retracting all of them, resuming at block %d",
                      self.window.size, n + 1)
        orphans = self.window.pop_above(n)
        for orphan in orphans:
            await self.publisher.send(self.settings.topic_blocks, str(orphan.chain_id),
                                      orphan.model_copy(update={"reorged": True}))
        await self.publisher.flush()
        BLOCKS_PUBLISHED.labels("retraction").inc(len(orphans))
        self.published["retraction"] += len(orphans)
        self._save()
        if orphans:
            self.reorgs.append(len(orphans))
            REORGS.labels(depth_label(len(orphans))).inc()
            log.warning("reorg of depth %d at block %d (new block %s)", len(orphans), n + 1, block.hash[:10])
        return n

    async def _normalise(self, payload: Any, number: int) -> Block | None:
        assert self.chain_id is not None
        if payload is None:
            log.info("block %d not on the node yet", number)
            return None
        try:
            block = normalise_block(payload, self.chain_id)
            if block.number != number:
                raise MalformedPayload(f"number: asked for {number}, got {block.number}")
            return block
        except MalformedPayload as exc:
            await self._refuse(payload, f"malformed block: {exc}", key=number)
            return None

    async def _refuse(self, payload: Any, reason: str, key: int | str) -> None:
        """Dead-letter a payload once; a block refused again at the next head is only logged."""
        if self._dead_lettered == (key, reason):
            log.debug("still refusing %s: %s", key, reason)
            return
        self._dead_lettered = (key, reason)
        raw = json.dumps(payload) if payload is not None else ""
        await self.publisher.dead_letter(SOURCE, raw, reason, topic=self.settings.topic_blocks, key=str(key))

    async def _publish(self, payload: Mapping[str, Any], block: Block, *, backfill: bool) -> None:
        key = str(block.chain_id)
        await self.publisher.send(self.settings.topic_blocks, key, block)
        if self.settings.chain_txs:
            txs, bad = normalise_txs(payload, block)
            for tx in txs:
                await self.publisher.send(self.settings.topic_txs, key, tx)
            TXS_PUBLISHED.inc(len(txs))
            self.published["txs"] += len(txs)
            for raw, reason in bad:
                await self.publisher.dead_letter(SOURCE, str(raw), reason, topic=self.settings.topic_txs, key=key)
        self.window.push(block)
        BLOCKS_PUBLISHED.labels("canonical").inc()
        self.published["canonical"] += 1
        if backfill:
            BACKFILLED.inc()
        LAST_BLOCK.set(block.number)
        HEAD_LAG.set(max(0.0, time.time() - block.timestamp))


async def follow_chain(settings: Settings, *, node_url: str | None = None, duration: float | None = None,
                       stop: asyncio.Event | None = None) -> ChainFollower:
    """Ensure the topics, open a publisher, follow until ``duration`` elapses or ``stop`` is set
    (the cursor is saved either way), and return the stopped follower (counts, reorg depths)."""
    await ensure_topics(settings)
    async with Publisher(settings) as publisher:
        follower = ChainFollower(settings, publisher, node_url=node_url)
        heartbeat = asyncio.create_task(HEALTH.heartbeat())  # /livez fails if this loop stalls
        relay = asyncio.ensure_future(stop.wait()) if stop is not None else None
        if relay is not None:
            relay.add_done_callback(lambda _: follower.stop())
        try:
            await follower.run(duration)
        finally:
            heartbeat.cancel()
            if relay is not None:
                relay.cancel()
    return follower


def _head_hint(message: Any) -> tuple[int, str] | None:
    """(number, hash) from a newHeads notification, or None when it does not parse (then we ask the node)."""
    result = message.get("result") if isinstance(message, Mapping) else None
    if not isinstance(result, Mapping):
        return None
    number, block_hash = result.get("number"), result.get("hash")
    try:
        if hasattr(block_hash, "hex") and not isinstance(block_hash, str):
            block_hash = "0x" + bytes(block_hash).hex()
        return parse_quantity(number, "head number"), parse_hash(block_hash, "head hash")
    except MalformedPayload:
        return None

"""A local Ethereum node that replays a real block series over JSON-RPC, with reorgs on demand.

``chaincast up`` follows it instead of an empty dev chain, so the fee forecasts
move with real mainnet fees. It speaks what the block follower (and web3) use:
HTTP POST and a websocket on ``/`` with single or batched JSON-RPC calls,
``eth_subscribe("newHeads")`` notifications, ``eth_getBlockByNumber`` (numbers and
the tags latest / pending / safe / finalized / earliest), ``eth_getBlockByHash``,
``eth_blockNumber``, ``eth_chainId``, ``net_version``, ``web3_clientVersion``,
``eth_syncing``.

Blocks keep their real numbers, timestamps, base fee and gas; block 0 is a made-up
genesis (the follower identifies the chain by its hash). Hashes are derived from
(chain id, number, fork), so a restarted node serves the same chain. The head
advances in block time at ``speed`` times real time (``None``: all at once), starting
at ``start`` (the blocks before it are history, served on request). With
``reorg_every`` = N, every N-th new head also replaces the newest 1, 2 or 3 blocks
(cycling) below it with a fork of different hashes, as a real reorg does: a follower
that saw the old blocks finds the new head's parent unknown and walks back. Transactions are
served as hashes (the series has counts, not transactions); ``transactions_for``
is the one place to return full objects once a series carries them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiohttp import WSMsgType, web

from chaincast.models.blocks import BASE_FEE, GAS_LIMIT, GAS_USED, NUMBER, TIMESTAMP, TX_COUNT, load_blocks

log = logging.getLogger(__name__)

ZERO32 = "0x" + "00" * 32
EMPTY_UNCLES = "0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347"
MAX_BATCH = 100
MAX_REORG_DEPTH = 3


def _hex(value: int) -> str:
    return hex(int(value))


class RpcFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class ReplayNode:
    def __init__(self, blocks: np.ndarray, *, speed: float | None = 1.0, chain_id: int = 1, start: int | None = None,
                 reorg_every: int = 0, host: str = "127.0.0.1", port: int = 0) -> None:
        if len(blocks) < 2:
            raise ValueError("a replay node needs at least two blocks")
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive (or None for all at once)")
        if reorg_every < 0:
            raise ValueError("reorg_every must be >= 0")
        numbers = blocks[:, NUMBER].astype(np.int64)
        if np.any(np.diff(numbers) != 1):
            raise ValueError("a replay node needs contiguous block numbers")
        self.blocks = blocks
        self.first = int(numbers[0])
        self.last = int(numbers[-1])
        self.speed, self.chain_id, self.reorg_every = speed, chain_id, reorg_every
        self.start = self.first if start is None else min(max(start, self.first), self.last)
        self.head = self.start
        self.host, self.port = host, port
        self.forks: dict[int, int] = {}  # number -> fork generation (absent: 0)
        self.reorgs: list[tuple[int, int]] = []  # (head number, depth) injected so far
        self.finished = asyncio.Event()
        self._heads_served = 0
        self._subs: dict[web.WebSocketResponse, set[str]] = {}
        self._next_sub = 0
        self._runner: web.AppRunner | None = None
        self._clock: asyncio.Task | None = None

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> "ReplayNode":
        return cls(load_blocks(path).blocks, **kwargs)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    # --- the chain -------------------------------------------------------------------------

    def block_hash(self, number: int) -> str:
        fork = self.forks.get(number, 0)
        return "0x" + hashlib.sha256(f"{self.chain_id}:{number}:{fork}".encode()).hexdigest()

    def _row(self, number: int) -> np.ndarray:
        return self.blocks[number - self.first]

    def header(self, number: int) -> dict[str, Any]:
        if number == 0:
            return self._genesis()
        row = self._row(number)
        fork = self.forks.get(number, 0)
        return {
            "number": _hex(number), "hash": self.block_hash(number), "parentHash": self.block_hash(number - 1)
            if number > self.first else "0x" + hashlib.sha256(f"{self.chain_id}:before".encode()).hexdigest(),
            "timestamp": _hex(row[TIMESTAMP]), "baseFeePerGas": _hex(row[BASE_FEE]), "gasUsed": _hex(row[GAS_USED]),
            "gasLimit": _hex(row[GAS_LIMIT]), "miner": "0x" + "00" * 20, "difficulty": "0x0", "totalDifficulty": "0x0",
            "extraData": _hex(fork) if fork else "0x", "logsBloom": "0x" + "00" * 256, "mixHash": ZERO32,
            "nonce": "0x0000000000000000", "receiptsRoot": ZERO32, "sha3Uncles": EMPTY_UNCLES, "stateRoot": ZERO32,
            "transactionsRoot": ZERO32, "size": "0x0", "uncles": [],
        }

    def _genesis(self) -> dict[str, Any]:
        return {"number": "0x0", "hash": self.block_hash(0), "parentHash": ZERO32, "timestamp": "0x0",
                "gasUsed": "0x0", "gasLimit": _hex(30_000_000), "miner": "0x" + "00" * 20, "difficulty": "0x0",
                "extraData": "0x", "logsBloom": "0x" + "00" * 256, "mixHash": ZERO32, "nonce": "0x0000000000000042",
                "receiptsRoot": ZERO32, "sha3Uncles": EMPTY_UNCLES, "stateRoot": ZERO32, "transactionsRoot": ZERO32,
                "size": "0x0", "uncles": [], "transactions": []}

    def transactions_for(self, number: int, full: bool) -> list[Any]:
        """The block's transactions: hashes, one per counted transaction (``full`` is the hook for objects)."""
        count = self._row(number)[TX_COUNT]
        n = 0 if not np.isfinite(count) else int(count)
        fork = self.forks.get(number, 0)
        return ["0x" + hashlib.sha256(f"{self.chain_id}:{number}:{fork}:tx{i}".encode()).hexdigest()
                for i in range(n)]

    def block(self, number: int, full: bool) -> dict[str, Any] | None:
        if number == 0:
            return self._genesis()
        if not self.first <= number <= self.head:
            return None
        return {**self.header(number), "transactions": self.transactions_for(number, full)}

    def _resolve(self, tag: Any) -> int:
        if tag in ("latest", "pending", "safe", "finalized"):
            # "finalized" on a replay: two epochs behind, as on mainnet.
            return self.head if tag in ("latest", "pending") else max(self.first, self.head - (32 if tag == "safe"
                                                                                              else 64))
        if tag == "earliest":
            return 0
        if isinstance(tag, str) and tag.startswith("0x"):
            try:
                return int(tag, 16)
            except ValueError:
                pass
        raise RpcFailure(-32602, f"invalid block number or tag: {str(tag)[:40]!r}")

    # --- JSON-RPC ------------------------------------------------------------------------------

    def call(self, method: str, params: list[Any], ws: web.WebSocketResponse | None = None) -> Any:
        if method == "eth_chainId":
            return _hex(self.chain_id)
        if method == "net_version":
            return str(self.chain_id)
        if method == "web3_clientVersion":
            return "chaincast-replay/1"
        if method == "eth_syncing":
            return False
        if method == "eth_blockNumber":
            return _hex(self.head)
        if method == "eth_getBlockByNumber":
            if not params:
                raise RpcFailure(-32602, "missing block number")
            return self.block(self._resolve(params[0]), bool(params[1]) if len(params) > 1 else False)
        if method == "eth_getBlockByHash":
            wanted = str(params[0]).lower() if params else ""
            for n in range(self.head, max(self.first, self.head - 256) - 1, -1):
                if self.block_hash(n) == wanted:
                    return self.block(n, bool(params[1]) if len(params) > 1 else False)
            return None
        if method == "eth_subscribe":
            if ws is None:
                raise RpcFailure(-32601, "subscriptions need a websocket")
            if not params or params[0] != "newHeads":
                raise RpcFailure(-32602, f"unsupported subscription {params[:1]!r}")
            self._next_sub += 1
            sub = _hex(self._next_sub)
            self._subs.setdefault(ws, set()).add(sub)
            return sub
        if method == "eth_unsubscribe":
            subs = self._subs.get(ws, set()) if ws is not None else set()
            found = bool(params) and params[0] in subs
            subs.discard(params[0] if params else None)
            return found
        raise RpcFailure(-32601, f"the method {method} does not exist/is not available")

    def answer(self, request: Any, ws: web.WebSocketResponse | None = None) -> dict[str, Any]:
        rid = request.get("id") if isinstance(request, dict) else None
        try:
            if not isinstance(request, dict) or not isinstance(request.get("method"), str):
                raise RpcFailure(-32600, "invalid request")
            params = request.get("params") or []
            if not isinstance(params, list):
                raise RpcFailure(-32602, "params must be a list")
            return {"jsonrpc": "2.0", "id": rid, "result": self.call(request["method"], params, ws)}
        except RpcFailure as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": exc.code, "message": str(exc)}}

    def handle(self, raw: bytes | str, ws: web.WebSocketResponse | None = None) -> bytes:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}})
        if isinstance(body, list):
            if not body or len(body) > MAX_BATCH:
                return orjson.dumps({"jsonrpc": "2.0", "id": None,
                                     "error": {"code": -32600, "message": f"batch of 1..{MAX_BATCH} calls"}})
            return orjson.dumps([self.answer(r, ws) for r in body])
        return orjson.dumps(self.answer(body, ws))

    async def _http(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        if request.method != "POST":
            return web.Response(status=405, text="JSON-RPC over POST or a websocket")
        return web.Response(body=self.handle(await request.read()), content_type="application/json")

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=1 << 20)
        await ws.prepare(request)
        self._subs[ws] = set()
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await ws.send_str(self.handle(msg.data, ws).decode())
        finally:
            self._subs.pop(ws, None)
        return ws

    async def _notify(self) -> None:
        header = self.header(self.head)
        for ws, subs in list(self._subs.items()):
            for sub in list(subs):
                message = {"jsonrpc": "2.0", "method": "eth_subscription",
                           "params": {"subscription": sub, "result": header}}
                try:
                    await ws.send_str(orjson.dumps(message).decode())
                except (ConnectionResetError, RuntimeError):
                    self._subs.pop(ws, None)
                    break

    # --- the clock ---------------------------------------------------------------------------

    def advance(self) -> None:
        """One new head; every ``reorg_every``-th one also forks the newest 1..3 blocks."""
        self.head += 1
        self._heads_served += 1
        if self.reorg_every and self._heads_served % self.reorg_every == 0:
            depth = 1 + len(self.reorgs) % MAX_REORG_DEPTH
            depth = min(depth, self.head - self.start)  # only blocks a follower may have seen
            if depth >= 1:
                for n in range(self.head - depth, self.head):  # the new head's parent link follows
                    self.forks[n] = self.forks.get(n, 0) + 1
                self.reorgs.append((self.head, depth))
                log.info("reorg of depth %d at head %d", depth, self.head)

    async def _run_clock(self) -> None:
        wall0 = time.monotonic()
        t0 = float(self._row(self.start)[TIMESTAMP])
        while self.head < self.last:
            if self.speed is not None:
                due = wall0 + (float(self._row(self.head + 1)[TIMESTAMP]) - t0) / self.speed
                if (ahead := due - time.monotonic()) > 0:
                    await asyncio.sleep(ahead)
            self.advance()
            await self._notify()
            if self.speed is None:
                await asyncio.sleep(0)
        log.info("replay finished at block %d", self.head)
        self.finished.set()

    async def start_serving(self) -> "ReplayNode":
        app = web.Application(client_max_size=1 << 20)
        app.router.add_route("*", "/", self._http)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # port 0: learn the one the OS gave
        self._clock = asyncio.create_task(self._run_clock())
        log.info("replay node on %s: blocks %d..%d from %d at speed %s", self.url, self.first, self.last,
                 self.start, self.speed or "max")
        return self

    async def stop(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock
        for ws in list(self._subs):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> "ReplayNode":
        return await self.start_serving()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve_chain(path: str | Path, *, speed: float | None, host: str = "127.0.0.1", port: int = 8545,
                      chain_id: int = 1, start: int | None = None, reorg_every: int = 0,
                      stop: asyncio.Event | None = None,
                      started: Callable[[ReplayNode], None] | None = None) -> ReplayNode:
    """Serve ``path`` until ``stop`` is set; ``started`` learns the node (and its port) once it listens."""
    node = ReplayNode.from_file(path, speed=speed, chain_id=chain_id, start=start, reorg_every=reorg_every,
                                host=host, port=port)
    async with node:
        if started is not None:
            started(node)
        await (stop or asyncio.Event()).wait()
    return node

"""A local Ethereum dev chain: a Hardhat 2 node (from deploy/hardhat's lockfile) as a child process.

``chaincast up`` uses it as the chain source when no node URL is set, and the chain
tests use it as a real node: interval mining gives a live head, ``evm_snapshot`` /
``evm_revert`` plus re-mining give real reorgs, ``hardhat_mine`` mines thousands of
blocks at once. ``npm ci`` runs on first use (idempotent, quiet, locked against a
concurrent install); node and npm are required and their absence is a clear error.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import random
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from chaincast.deploy.embedded import EmbeddedError, Process, free_port

log = logging.getLogger(__name__)

HARDHAT_DIR = Path(__file__).resolve().parent / "hardhat"
# Hardhat's well-known dev accounts (public keys of a public mnemonic): unlocked on its node.
DEV_ACCOUNTS = [
    "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266", "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
    "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc", "0x90f79bf6eb2c4f870365e785982e1f101e93b906",
    "0x15d34aaf54267db7d7c367839aaf71a00a2c6a65", "0x9965507d1a55bcc2695c58ba16fb37d819b0a4dc",
]


def ensure_installed(directory: Path = HARDHAT_DIR, timeout: float = 300.0) -> Path:
    """``npm ci`` unless node_modules already holds Hardhat; returns the hardhat executable."""
    binary = directory / "node_modules" / ".bin" / "hardhat"
    if binary.exists():
        return binary
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise EmbeddedError(f"{tool} is not on PATH: the local chain needs Node.js 18+ and npm "
                                f"(then `npm ci --prefix {directory}`), or set CHAINCAST_NODE_URL")
    with open(directory / ".npm-ci.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test sessions must not install into one node_modules
        if not binary.exists():
            log.info("installing the local chain (npm ci in %s)", directory)
            done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=directory,
                                  capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0 or not binary.exists():
                raise EmbeddedError(f"npm ci in {directory} failed ({done.returncode}): {done.stderr[-2000:]}")
    return binary


def rpc(url: str, method: str, params: list[Any] | None = None, timeout: float = 10.0) -> Any:
    """One blocking JSON-RPC call (setup and tests; the follower uses web3)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    if reply.get("error"):
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


def start_hardhat(log_dir: Path, port: int | None = None, *, mining_interval_ms: int = 0,
                  timeout: float = 60.0) -> tuple[Process, str, str]:
    """Start a Hardhat node on a free loopback port; wait until it answers eth_blockNumber.

    ``mining_interval_ms`` > 0 mines a block every interval (transactions wait for it);
    0 keeps automine (a block per transaction, or per ``evm_mine``/``hardhat_mine``).
    Returns the process and its HTTP and websocket URLs.
    """
    binary = ensure_installed()
    log_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {**os.environ, "HARDHAT_DISABLE_TELEMETRY_PROMPT": "true", "DO_NOT_TRACK": "1"}
    # Hardhat insists on running from its project directory; exec keeps the pid the node's own.
    argv = ["sh", "-c", 'cd "$0" && exec "$1" node --hostname 127.0.0.1 --port "$2"',
            str(HARDHAT_DIR), str(binary), str(port)]
    proc = Process("hardhat", argv, env=env, log_path=log_dir / "hardhat.log").start()
    http_url, ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    try:
        _wait_ready(http_url, proc, timeout)
        if mining_interval_ms > 0:
            set_interval_mining(http_url, mining_interval_ms)
    except BaseException:
        proc.stop()
        raise
    return proc, http_url, ws_url


def _wait_ready(url: str, proc: Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise EmbeddedError(f"the hardhat node exited early; see {proc.log_path}")
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            rpc(url, "eth_blockNumber", timeout=1.0)
            return
        time.sleep(0.1)
    raise EmbeddedError(f"the hardhat node did not answer eth_blockNumber within {timeout:.0f}s")


def set_interval_mining(url: str, interval_ms: int) -> None:
    """A block every ``interval_ms`` (0 = stop), automine off so transactions share blocks."""
    rpc(url, "evm_setAutomine", [interval_ms == 0])
    rpc(url, "evm_setIntervalMining", [interval_ms])


async def dev_traffic(url: str, stop: asyncio.Event, tps: float = 2.0, seed: int | None = None) -> int:
    """Random ETH transfers between the dev accounts so local blocks carry transactions
    (chain features of empty blocks are all zero). Returns how many were sent."""
    rng = random.Random(seed)
    sent = 0
    while not stop.is_set():
        sender, receiver = rng.sample(DEV_ACCOUNTS, 2)
        value = hex(rng.randint(10**15, 10**18))
        try:
            await asyncio.to_thread(rpc, url, "eth_sendTransaction", [{"from": sender, "to": receiver, "value": value}])
            sent += 1
        except (OSError, RuntimeError) as exc:  # the node stopping under us ends the traffic, not chaincast
            log.info("dev traffic stopped: %s", exc)
            return sent
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=rng.expovariate(tps))
    return sent

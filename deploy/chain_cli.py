"""``chaincast produce chain``: follow an Ethereum node into chain.blocks (and chain.txs).

Mounted by the main CLI as ``produce chain``; also runnable alone:
``python -m chaincast.deploy.chain_cli chain --node ws://127.0.0.1:8545 --duration 30``.
Options override the matching CHAINCAST_* settings; the node URL is never printed
unredacted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import typer

# The follower (web3, aiokafka) is imported by the commands that run it: the CLI's help stays fast.
from chaincast.deploy.cli_args import load_settings, run_app
from chaincast.deploy.metrics import serve_metrics
from chaincast.models.logs import setup_logging
from chaincast.deploy.preflight import kafka_ready
from chaincast.stream.settings import Settings
from chaincast.stream.shutdown import run_until_signalled

if TYPE_CHECKING:
    from chaincast.producers.chain import ChainFollower

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, help=__doc__)


@app.callback()
def _alone(ctx: typer.Context) -> None:
    """Run alone (``python -m``), the follower serves its metrics here; mounted under
    ``chaincast produce``, the produce group's callback does (one metrics server per process)."""
    if ctx.invoked_subcommand != "chain":  # the bench measures a follower of its own
        return
    settings = load_settings()
    if settings.metrics_port:
        serve_metrics(settings.metrics_port, settings.metrics_host)


async def _follow(settings: Settings, duration: float | None) -> None:
    from chaincast.producers.chain import follow_chain
    from chaincast.producers.chain_node import redact

    # stops between batches: the cursor is saved
    follower = await run_until_signalled(lambda stop: follow_chain(settings, duration=duration, stop=stop))
    tip = follower.tip
    typer.echo(
        f"published {follower.published['canonical']} blocks, {follower.published['retraction']} retractions, "
        f"{follower.published['txs']} txs from {redact(settings.node_url)}; "
        f"reorgs {follower.reorgs or 'none'}; last block {tip.number if tip else None}"
    )


@app.command("chain")
def chain(
    node: str = typer.Option(None, "--node", help="ws(s):// (newHeads) or http(s):// (polling) node URL; "
                                                  "default CHAINCAST_NODE_URL"),
    from_block: int = typer.Option(None, "--from-block", min=0, help="first block when there is no cursor"),
    confirmations: str = typer.Option(None, "--confirmations", help="0 (head), N blocks, or 'finalized'"),
    txs: bool = typer.Option(None, "--txs/--no-txs", help="also publish transactions to chain.txs"),
    duration: float = typer.Option(None, "--duration", min=0, help="stop after this many seconds"),
    rps: float = typer.Option(None, "--rps", min=0, help="requests per second to the node (0 = no limit)"),
    log_level: str = typer.Option(None, "--log-level"),
) -> None:
    """Follow a node: blocks to chain.blocks, reorgs retracted, cursor saved, gaps backfilled."""
    settings = load_settings(
        CHAINCAST_NODE_URL=node, CHAINCAST_CHAIN_FROM_BLOCK=from_block, CHAINCAST_CHAIN_CONFIRMATIONS=confirmations,
        CHAINCAST_CHAIN_TXS=txs, CHAINCAST_CHAIN_RPS=rps, CHAINCAST_LOG_LEVEL=log_level,
    )
    if not settings.node_url:
        raise typer.BadParameter("give --node URL or set CHAINCAST_NODE_URL", param_hint="--node")
    settings = kafka_ready(settings)
    from chaincast.producers.cursor import CursorError

    try:
        asyncio.run(_follow(settings, duration))
    except CursorError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@app.command("bench")
def bench(
    blocks: int = typer.Option(5000, "--blocks", min=1, help="blocks to mine, then backfill"),
    transport: str = typer.Option("ws", "--transport", help="ws or http"),
    concurrency: int = typer.Option(8, "--concurrency", min=1),
) -> None:
    """Blocks/s a follower sustains backfilling a local chain into the embedded broker."""
    import tempfile
    import time
    from pathlib import Path

    from chaincast.deploy.embedded import embedded_stack
    from chaincast.deploy.hardhat import rpc, start_hardhat

    setup_logging()
    with tempfile.TemporaryDirectory(prefix="chain-bench-") as tmp, \
            embedded_stack(Path(tmp) / "stack", redis=False) as env:
        proc, http_url, ws_url = start_hardhat(Path(tmp))
        try:
            for i in range(0, blocks, 500):  # evm_mine, not hardhat_mine: its reserved blocks do not link
                _mine_batch(http_url, min(500, blocks - i))
            settings = load_settings(**env, CHAINCAST_HOME=str(Path(tmp) / "home"), CHAINCAST_CHAIN_FROM_BLOCK=1,
                                     CHAINCAST_CHAIN_RPS=0, CHAINCAST_CHAIN_CONCURRENCY=concurrency,
                                     CHAINCAST_METRICS_PORT=0)
            url = ws_url if transport == "ws" else http_url
            head = int(rpc(http_url, "eth_blockNumber"), 16)
            started = time.perf_counter()
            follower = asyncio.run(_until_block(settings, url, head))
            elapsed = time.perf_counter() - started
        finally:
            proc.stop()
    n = follower.published["canonical"]
    typer.echo(f"{n} blocks over {transport} (concurrency {concurrency}) in {elapsed:.2f}s: {n / elapsed:.0f} blocks/s")


def _mine_batch(url: str, n: int) -> None:
    import json
    import urllib.request

    body = json.dumps([{"jsonrpc": "2.0", "id": i, "method": "evm_mine", "params": []} for i in range(n)]).encode()
    with urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"}), timeout=60):
        pass


async def _until_block(settings: Settings, url: str, last: int) -> ChainFollower:
    from chaincast.producers.chain import ChainFollower
    from chaincast.stream.publish import Publisher
    from chaincast.stream.topics import ensure_topics

    await ensure_topics(settings)
    async with Publisher(settings) as publisher:
        follower = ChainFollower(settings, publisher, node_url=url)
        task = asyncio.create_task(follower.run())
        while (follower.tip is None or follower.tip.number < last) and not task.done():
            await asyncio.sleep(0.01)
        follower.stop()
        await task
    return follower


def main() -> None:
    run_app(app, prog_name="chaincast-chain")


if __name__ == "__main__":
    main()

"""``chaincast backtest`` on a block series, and ``chaincast chain serve``: the fee side of the CLI.

``backtest`` hands a ``--data`` file whose header is a block series (``models.blocks``)
to ``backtest_blocks``; everything else stays the market backtest.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from chaincast.models.blocks import BlockFormatError, is_block_file, load_blocks
from chaincast.models.fees import FEE_TARGETS
from chaincast.models.logs import setup_logging


def is_block_data(paths: list[Path]) -> bool:
    return bool(paths) and all(p.is_file() for p in paths) and is_block_file(paths[0])


def backtest_blocks(ctx: typer.Context, data: list[Path], horizon: int, models: str, window: int, target: str,
                    seed: int, min_skill: float, json_out: Path | None, threads: int,
                    max_train: int = 200_000) -> None:
    """The fee backtest of ``models`` beside persistence and EIP-1559 on one block file."""
    paths = [*data, *(Path(a) for a in ctx.args)]
    if len(paths) != 1:
        raise typer.BadParameter("a block backtest takes one block series file", param_hint="--data")
    target_source = ctx.get_parameter_source("target")  # the market default is a market target
    if target_source is None or target_source.name == "DEFAULT":
        target = "base_fee"
    # torch: imported by the command that trains, never by `chaincast --help` or serving
    from chaincast.models.fee_backtest import fee_backtest, format_fee_table
    from chaincast.models.fee_models import FEE_LEARNED, FeeFit, baselines_for

    if target not in FEE_TARGETS:
        raise typer.BadParameter(f"{target!r} is not a block target ({', '.join(FEE_TARGETS)})",
                                 param_hint="--target")
    source = ctx.get_parameter_source("models")  # the market default names market families
    chosen = FEE_LEARNED if source is None or source.name == "DEFAULT" else tuple(
        m.strip() for m in models.split(",") if m.strip())
    known = (*baselines_for(target), *FEE_LEARNED)
    bad = [m for m in chosen if m not in known]
    if bad or not chosen:
        raise typer.BadParameter(f"{', '.join(bad) or 'nothing'}: fee models are {', '.join(known)}",
                                 param_hint="--models")
    setup_logging("WARNING")
    try:
        series = load_blocks(paths[0])
    except BlockFormatError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from None
    typer.echo(f"{paths[0].name}: {series.summary()}", err=True)
    try:
        report = fee_backtest(series.blocks, horizon, target, chosen, window, max_train,
                              FeeFit(seed=seed, threads=threads), progress=lambda m: typer.echo(f"  {m}", err=True),
                              min_skill=min_skill)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from None
    report.refused = dict(series.refused)
    typer.echo(format_fee_table(report))
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        typer.echo(f"wrote {json_out}")


chain_app = typer.Typer(help="The local replay node (real mainnet blocks over JSON-RPC).", no_args_is_help=True)

BUNDLED_BLOCKS = Path(__file__).parent / "data" / "mainnet_blocks_18620000_18649999.csv.gz"


@chain_app.command("serve")
def chain_serve(
    data: Path = typer.Option(BUNDLED_BLOCKS, "--data", help="Block series (CSV / JSON, see models/blocks.py)."),
    speed: str = typer.Option("1", help="Block time per wall time (12 = a block a second), or 'max'."),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8545, min=0, max=65535, help="0 = any free port (printed)."),
    chain_id: int = typer.Option(1, "--chain-id", min=1),
    start: int = typer.Option(None, help="First head (a block number); earlier blocks are history."),
    reorg_every: int = typer.Option(0, "--reorg-every", min=0, help="Fork the newest 1..3 blocks every N heads."),
    duration: float = typer.Option(None, min=0.1, help="Stop after this many seconds."),
) -> None:
    """Serve a real block series over JSON-RPC (HTTP and websocket newHeads) at N x real time."""
    import asyncio

    from chaincast.deploy.cli_args import parse_speed
    from chaincast.producers.chain_server import serve_chain

    if not data.is_file():
        raise typer.BadParameter(f"no such file: {data}", param_hint="--data")
    rate = parse_speed(speed)

    async def run() -> None:
        stop = asyncio.Event()
        if duration is not None:
            asyncio.get_running_loop().call_later(duration, stop.set)

        def started(node) -> None:  # noqa: ANN001 - a ReplayNode
            typer.echo(f"replay node on {node.url} and {node.ws_url}: blocks {node.first}..{node.last}, "
                       f"head from {node.head}, chain id {node.chain_id}", err=True)

        await serve_chain(data, speed=rate, host=host, port=port, chain_id=chain_id, start=start,
                          reorg_every=reorg_every, stop=stop, started=started)

    try:
        asyncio.run(run())
    except (BlockFormatError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from None
    except KeyboardInterrupt:
        pass


def retrain_fees() -> None:
    """Run the fee retrainer: challengers on the recent blocks, promoted only when they beat champion and reference."""
    import asyncio

    from chaincast.consumers.fee_retrainer import run_fee_retrainer
    from chaincast.deploy.cli_args import load_settings
    from chaincast.deploy.metrics import serve_metrics

    settings = load_settings()
    if not settings.kafka_bootstrap_servers:
        raise typer.BadParameter("the fee retrainer needs KAFKA_BOOTSTRAP_SERVERS")
    if settings.metrics_port:
        serve_metrics(settings.metrics_port, settings.metrics_host)
    try:
        asyncio.run(run_fee_retrainer(settings))
    except KeyboardInterrupt:
        pass

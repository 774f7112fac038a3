"""``chaincast backtest`` on a block series, and ``chaincast chain serve``: the fee side of the CLI.

``backtest`` hands a ``--data`` file whose header is a block series (``models.blocks``)
to ``backtest_blocks``; everything else stays the market backtest.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from chaincast.models.blocks import BlockFormatError, is_block_file, load_blocks
from chaincast.models.fee_backtest import fee_backtest, format_fee_table
from chaincast.models.fee_models import FEE_LEARNED, FeeFit, baselines_for
from chaincast.models.fees import FEE_TARGETS


def is_block_data(paths: list[Path]) -> bool:
    return bool(paths) and all(p.is_file() for p in paths) and is_block_file(paths[0])


def backtest_blocks(ctx: typer.Context, data: list[Path], horizon: int, models: str, window: int, target: str,
                    seed: int, min_skill: float, json_out: Path | None, threads: int,
                    max_train: int = 200_000) -> None:
    """The fee backtest of ``models`` beside persistence and EIP-1559 on one block file."""
    paths = [*data, *(Path(a) for a in ctx.args)]
    if len(paths) != 1:
        raise typer.BadParameter("a block backtest takes one block series file", param_hint="--data")
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
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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

"""``chaincast models import FILE.onnx --card CARD.json``: bring your own model through the gate."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Optional

import typer

from chaincast.deploy.cli_args import DataOpt, check_files, load_settings


def import_model(
    onnx_file: Annotated[Path, typer.Argument(help="The ONNX graph: x (batch, window, features) -> y (batch, 4).")],
    card: Annotated[Path, typer.Option(help="JSON card: window, horizon, features, target (+ family, name).")],
    data: DataOpt = None,
    val_bars: Annotated[Optional[int], typer.Option(help="Validation bars per symbol (default: the retrainer's).",
                                                    min=20)] = None,
) -> None:
    """Check the contract, smoke-run it like a worker, judge it like a trained challenger; serve it only if it wins.

    Judged on the newest bars of --data (default: the bundled week) beside persistence and the champion.
    """
    from chaincast.consumers.model_import import ImportRefused, check_contract, judge, read_card
    from chaincast.consumers.promotion import announce
    from chaincast.consumers.registry import Registry
    from chaincast.deploy.up import files_by_symbol
    from chaincast.models.history import HistoryFormatError, load_many

    settings = load_settings()
    check_files([onnx_file, card, *(data or [])])
    try:
        bars = {s: load_many(p) for s, p in files_by_symbol(data or [], settings.symbols).items()}
    except (ValueError, HistoryFormatError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from None
    registry = Registry(settings.registry_dir)
    champion = registry.champion(settings.model_name)
    try:
        model = check_contract(onnx_file.read_bytes(), read_card(card), settings.window, settings.horizon,
                               onnx_file.name)
        typer.echo(f"contract and smoke run passed: {model.family}, window {model.window}, horizon {model.horizon}")
        verdict = judge(model, bars, val_bars or settings.retrain_val_bars, settings.promote_margin,
                        settings.retrain_alpha, champion)
    except ImportRefused as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(1) from None
    for role, s in verdict.scores.items():
        typer.echo(f"  {role:<11} mae {s.mae:.4e}  skill vs persistence {s.skill:+.4f}  coverage_80 "
                   f"{s.coverage_80:.3f}  ({s.rows} rows)")
    if not verdict.decision.promote:
        typer.echo(f"refused by the gate: {verdict.decision.reason}", err=True)
        raise typer.Exit(1)
    entry = registry.put(onnx_file.read_bytes(), {**verdict.card, "name": settings.model_name})
    registry.set_champion(settings.model_name, entry.version)
    typer.echo(f"{settings.model_name} -> {entry.version} (imported) is the champion")
    if settings.kafka_bootstrap_servers:
        asyncio.run(announce(settings, settings.model_name, entry))
        typer.echo("announced to the workers")
    else:
        typer.echo("no broker configured: workers load it at their next start (or `chaincast models promote`)")

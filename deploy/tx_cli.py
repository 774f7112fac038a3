"""``chaincast backtest|train --target tx_value``: the transaction-value side of the models CLI.

``models_cli`` dispatches here when the target is ``tx_value``; the files are
transaction histories (ethereum-etl ``transactions.csv`` or ``chain.txs`` JSON
lines, detected from the first line). Refused rows are reported with their
reasons; an unusable file is a one-line error (exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from chaincast.models.tx_backtest import ALL_FAMILIES, format_table, tx_backtest
from chaincast.models.tx_encoder import TxFit
from chaincast.models.txs import Refusals, TxFormatError, TxTable, read_transactions


def load_txs(paths: list[Path]) -> tuple[TxTable, Refusals]:
    for p in paths:
        if str(p).startswith("-"):
            raise typer.BadParameter(f"unknown option {p}")
        if not p.is_file():
            raise typer.BadParameter(f"no such file: {p}", param_hint="--data")
    try:
        table, refusals = read_transactions(paths)
    except TxFormatError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from None
    typer.echo(f"read {len(table)} transactions, refused {refusals.total} ({refusals.summary()})", err=True)
    return table, refusals


def families_of(models: str, default: str) -> tuple[str, ...]:
    """The tx families to run: all of them unless --models names tx families."""
    if models == default:
        return ALL_FAMILIES
    chosen = tuple(m.strip() for m in models.split(",") if m.strip())
    bad = [m for m in chosen if m not in ALL_FAMILIES]
    if bad or not chosen:
        raise typer.BadParameter(f"{','.join(bad) or models!r} not among {', '.join(ALL_FAMILIES)}",
                                 param_hint="--models")
    return chosen


def backtest_txs(paths: list[Path], families: tuple[str, ...], window: int, folds: int, seed: int,
                 epochs: int, json_out: Path | None) -> None:
    table, refusals = load_txs(paths)
    try:
        report = tx_backtest(table, window, folds, families, TxFit(epochs=epochs, seed=seed),
                             progress=lambda msg: typer.echo(f"  {msg}", err=True))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from None
    report.refused = dict(refusals.counts)
    typer.echo(format_table(report))
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        typer.echo(f"wrote {json_out}")


def train_txs(paths: list[Path], window: int, epochs: int, seed: int, name: str | None, out: Path,
              promote: bool) -> None:
    """Train, gate against the reference on validation, export with parity, store; optionally make champion."""
    from chaincast.consumers.registry import Registry
    from chaincast.models.export import ExportError
    from chaincast.models.tx_build import TX_KIND, build_tx_model, export_tx_checked

    table, _ = load_txs(paths)

    def progress(epoch: int, tr: float, val: float) -> None:
        typer.echo(f"  epoch {epoch + 1:>3}  train {tr:.4f}  val mae {val:.4f}")

    try:
        build = build_tx_model(table, window, TxFit(epochs=epochs, seed=seed), name=name or TX_KIND,
                               progress=progress)
        onnx_bytes, card = export_tx_checked(build)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from None
    except ExportError as exc:
        typer.echo(f"export refused: {exc}", err=True)
        raise typer.Exit(1) from None
    registry = Registry(out)
    entry = registry.put(onnx_bytes, card)
    for m, c in card["candidates"].items():
        typer.echo(f"  {m:<16} val mae {c['val_mae']:.3f}  test mae {c['test_mae']:.3f}")
    test = card["metrics"]["test"]
    typer.echo(f"stored {entry.onnx_path} ({card['family']}, reference {card['reference']}, version {entry.version}, "
               f"parity {card['parity_max_abs_diff']:.2g}); test mae {test['mae']:.3f}, skill vs reference "
               f"{test['skill_vs_persistence']:+.3f}, vs constant {test['skill_vs_constant']:+.3f}")
    if card["family"] != "transformer":
        typer.echo("the encoder did not beat the reference on validation"
                   + (" (it collapsed to a constant)" if card["collapsed"] else "") + ": the reference serves")
    if promote:
        registry.set_champion(entry.name, entry.version)
        typer.echo(f"champion of {entry.name!r} is now {entry.version}")

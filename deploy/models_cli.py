"""``chaincast train`` and ``chaincast backtest``: the models side of the CLI.

The lead's CLI mounts these commands; ``python -m chaincast.deploy.models_cli`` runs
them alone. ``--data`` takes one or more files (``--data a.csv b.csv`` or the
option repeated); files of the same symbol are joined into one series.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import typer

from chaincast.consumers.registry import Registry
from chaincast.deploy.cli_args import load_settings, run_app
from chaincast.models.family_names import FAMILIES, LEARNED
from chaincast.models.features import GROUPS
from chaincast.models.history import HistoryFormatError, load_many, symbol_of
from chaincast.models.logs import setup_logging
from chaincast.models.targets import TARGETS, TX_TARGET

app = typer.Typer(help="Train and backtest chaincast models.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
EXTRA = {"allow_extra_args": True}  # lets `--data a.csv b.csv` pass several files after one flag


def load_series(ctx: typer.Context, data: list[Path]) -> list[np.ndarray]:
    """One bars array per symbol, from every file given; a bad file is a one-line error."""
    paths = [*data, *(Path(a) for a in ctx.args)]
    groups: dict[str, list[Path]] = {}
    for p in paths:
        if str(p).startswith("-"):
            raise fail(f"unknown option {p}")
        if not p.is_file():
            raise fail(f"--data: no such file: {p}")
        groups.setdefault(symbol_of(p) or str(p), []).append(p)
    try:
        return [load_many(list(g)) for g in groups.values()]
    except HistoryFormatError as exc:
        raise fail(f"--data: {exc}") from None


def fail(message: str) -> typer.BadParameter:
    """A bad argument or unusable data: ``run_app`` prints it as one line and exits 2."""
    return typer.BadParameter(message)


def _check(choice: str, allowed: tuple[str, ...], hint: str) -> str:
    if choice not in allowed:
        raise fail(f"{hint}: {choice!r} is not one of {', '.join(allowed)}")
    return choice


def _setup(threads: int) -> None:
    import torch  # here, not at import: `chaincast --help` and the serving commands never load torch

    torch.set_num_threads(threads)
    setup_logging()


@app.command(context_settings=EXTRA)
def train(
    ctx: typer.Context,
    data: list[Path] = typer.Option(..., "--data", help="History file(s): CSV (.gz), exchange export, freqtrade JSON."),
    model: str = typer.Option("gru", help=f"Family: {', '.join(FAMILIES)}."),
    horizon: int = typer.Option(1, min=1, max=1440, help="Bars ahead."),
    window: int = typer.Option(32, min=2, max=4096, help="Bars of features the model sees."),
    target: str = typer.Option("log_return", help=f"Target: {', '.join(TARGETS)}, or {TX_TARGET} (transactions)."),
    epochs: int = typer.Option(20, min=1, help="Max epochs (early stopping on validation)."),
    seed: int = typer.Option(0),
    name: str | None = typer.Option(None, help="Model name in the card (default: the family)."),
    out: Path | None = typer.Option(None, help="Registry directory (default: $CHAINCAST_HOME/registry)."),
    promote: bool = typer.Option(False, help="Make it the champion of NAME, only if it beats persistence on test."),
    threads: int = typer.Option(1, min=1, help="Torch threads."),
) -> None:
    """Train one model, export it to ONNX with a parity check and store it in the registry."""
    if target == TX_TARGET:  # transaction histories, not bars: the tx side of the CLI
        from chaincast.deploy import tx_cli  # torch: only when it trains

        _setup(threads)
        tx_cli.train_txs([*data, *(Path(a) for a in ctx.args)], window, epochs, seed, name,
                         out or load_settings().registry_dir, promote)
        return
    _check(model, FAMILIES, "--model")
    _check(target, TARGETS, "--target")
    registry = Registry(out or load_settings().registry_dir)  # a bad setting fails before training
    bars = load_series(ctx, data)
    _setup(threads)
    from chaincast.models.build import export_checked
    from chaincast.models.export import ExportError
    from chaincast.models.train import FitOptions, train as run_train

    def progress(epoch: int, tr: float, val: float, best: float) -> None:
        typer.echo(f"  epoch {epoch + 1:>3}  train {tr:.4f}  val {val:.4f}  best {best:.4f}")

    typer.echo(f"training {model} on {sum(len(b) for b in bars)} bars ({len(bars)} series), horizon {horizon}")
    try:
        result = run_train(bars, model, window, horizon, seed=seed, target=target,
                           options=FitOptions(max_epochs=epochs), name=name, progress=progress)
        onnx_bytes, card = export_checked(result)
    except ValueError as exc:  # too little contiguous data for the splits
        raise fail(f"--data: {exc}") from None
    except ExportError as exc:
        typer.echo(f"export refused: {exc}", err=True)
        raise typer.Exit(1) from None
    entry = registry.put(onnx_bytes, card)
    test = card["metrics"]["test"]
    typer.echo(f"stored {entry.onnx_path} (version {entry.version}, parity {card['parity_max_abs_diff']:.2g})")
    typer.echo(f"test: mae {test['mae']:.4e} vs persistence {test['mae_persistence']:.4e}, "
               f"skill {test['skill_vs_persistence']:+.4f}, coverage_80 {test['coverage_80']:.3f}")
    if promote:
        if test["skill_vs_persistence"] > 0 or model == "persistence":
            registry.set_champion(entry.name, entry.version)
            typer.echo(f"champion of {entry.name!r} is now {entry.version}")
        else:
            typer.echo("not promoted: it does not beat persistence on test")


@app.command(context_settings=EXTRA)
def backtest(
    ctx: typer.Context,
    data: list[Path] = typer.Option(..., "--data", help="History file(s)."),
    horizon: int = typer.Option(1, min=1, max=1440, help="Bars ahead."),
    models: str = typer.Option(",".join(LEARNED), help="Comma-separated families beside the references."),
    window: int = typer.Option(32, min=2, max=4096),
    target: str = typer.Option("log_return", help=f"Target: {', '.join(TARGETS)}, or {TX_TARGET} (transactions)."),
    folds: int = typer.Option(3, min=1, max=50, help="Walk-forward test windows."),
    seed: int = typer.Option(0),
    min_skill: float = typer.Option(0.0, min=0.0, max=1.0, help="Skill vs persistence the gate demands (> it)."),
    features: str = typer.Option("base", help=f"Feature groups, comma-separated: {', '.join(GROUPS)}."),
    ablation: bool = typer.Option(False, help="Also score linear and lightgbm with/without each feature group."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results as JSON here."),
    report_dir: Path | None = typer.Option(None, "--report", help="Write a self-contained HTML report into this directory."),
    plot: Path | None = typer.Option(None, help="Plot the last test window's forecast band (needs matplotlib)."),
    threads: int = typer.Option(1, min=1, help="Torch threads."),
) -> None:
    """Walk-forward backtest of every model beside persistence, EMA drift and HAR; prints a table.

    ``selected`` is chosen on validation rows only; bands are calibrated online (adaptive conformal).
    On a block series (detected from the header) the fee backtest runs instead (deploy/fees_cli.py).
    """
    if target == TX_TARGET:  # transaction histories: medians, linear, LightGBM and the encoder
        from chaincast.deploy import tx_cli  # torch: only when it trains

        families = tx_cli.families_of(models, ",".join(LEARNED))
        _setup(threads)
        tx_cli.backtest_txs([*data, *(Path(a) for a in ctx.args)], families, window, folds, seed, 6, json_out)
        return
    from chaincast.deploy import fees_cli

    if fees_cli.is_block_data(data):
        fees_cli.backtest_blocks(ctx, data, horizon, models, window, target, seed, min_skill, json_out, threads)
        return
    chosen = tuple(m.strip() for m in models.split(",") if m.strip())
    if not chosen:
        raise fail("--models: give at least one model")
    for m in chosen:
        _check(m, FAMILIES, "--models")
    _check(target, TARGETS, "--target")
    groups = tuple(g.strip() for g in features.split(",") if g.strip())
    for g in groups:
        _check(g, tuple(GROUPS), "--features")
    bars = load_series(ctx, data)
    _setup(threads)
    from chaincast.models.backtest import backtest as run_backtest
    from chaincast.models.backtest import format_table
    from chaincast.models.plot import PlotUnavailable, plot_last_window
    from chaincast.models.report import write_report

    try:
        report = run_backtest(bars, horizon, chosen, window, target, folds, seed=seed, min_skill=min_skill,
                              groups=groups, ablation=ablation, progress=lambda msg: typer.echo(f"  {msg}", err=True))
    except ValueError as exc:  # horizon longer than the data, too few rows for the folds, no chain columns
        raise fail(str(exc)) from None
    typer.echo(format_table(report))
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        typer.echo(f"wrote {json_out}")
    if report_dir is not None:
        typer.echo(f"wrote {write_report(report, report_dir)}")
    if plot is not None:
        try:
            typer.echo(f"wrote {plot_last_window(report, plot)}")
        except PlotUnavailable as exc:
            typer.echo(str(exc), err=True)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()

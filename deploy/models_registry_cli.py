"""``chaincast models list|promote`` (registry and rollback) and ``chaincast retrain``.

The main CLI mounts ``models_app`` as ``models`` and ``retrain`` as a command;
``python -m chaincast.deploy.models_registry_cli`` runs the retrainer alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import typer

from chaincast.consumers.promotion import announce
from chaincast.consumers.registry import ModelEntry, Registry
from chaincast.deploy.cli_args import console, load_settings, plain_table, run_app
from chaincast.deploy.preflight import kafka_ready
from chaincast.stream.settings import Settings
from chaincast.stream.shutdown import run_until_signalled

log = logging.getLogger(__name__)

models_app = typer.Typer(help="The model registry: list versions, promote one (rollback).", no_args_is_help=True,
                         add_completion=False, pretty_exceptions_enable=False)


def _settings() -> Settings:
    return load_settings()


def _metric(entry: ModelEntry, split: str, key: str) -> str:
    value = entry.card.get("metrics", {}).get(split, {}).get(key)
    return f"{value:+.4f}" if isinstance(value, (int, float)) else "-"


def describe(entry: ModelEntry, champion: str | None) -> list[str]:
    """The cells of one ``models list`` row."""
    created = dt.datetime.fromtimestamp(entry.card.get("created_at", 0) / 1000, dt.timezone.utc)
    return ["*" if entry.version == champion else "", entry.version, entry.card.get("family", "?"),
            f"{created:%Y-%m-%d %H:%M:%S}", _metric(entry, "val", "skill_vs_persistence"),
            _metric(entry, "holdout", "skill_vs_persistence"), _metric(entry, "holdout", "mae"),
            entry.card.get("parent") or "-"]


@models_app.command("list")
def list_models() -> None:
    """Every stored version, oldest first, with its metrics; * marks the champion."""
    settings = _settings()
    registry = Registry(settings.registry_dir)
    champion = registry.champion(settings.model_name)
    entries = registry.list()
    if not entries:
        typer.echo(f"no models in {settings.registry_dir}")
        return
    table = plain_table("", "version", "family", "created (UTC)", "val skill", "holdout skill", "holdout mae",
                        "parent")
    for entry in entries:
        table.add_row(*describe(entry, champion.version if champion else None))
    console().print(table)


@models_app.command("promote")
def promote(version: str = typer.Argument(..., help="The version to serve (a rollback when it is older).")) -> None:
    """Make VERSION the champion and announce it to every worker."""
    settings = kafka_ready(_settings())
    from chaincast.models.serving import Forecaster, ModelRejected  # onnxruntime: only to check a promotion

    registry = Registry(settings.registry_dir)
    name = settings.model_name
    try:
        entry = registry.get(version)
        # The same checks a worker makes: refusing here beats announcing what every worker will refuse.
        if entry.card.get("kind") == "tx_value":  # a transaction-value model: served by the txs agent
            from chaincast.models.tx_serving import TxForecaster

            TxForecaster.load(entry.onnx_path, expected_sha256=entry.sha256)
            name = settings.tx_model_name
        else:
            Forecaster.load(entry.onnx_path, expected_sha256=entry.sha256)
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0]), param_hint="VERSION") from None
    except ModelRejected as exc:
        raise typer.BadParameter(f"{version} cannot be served: {exc}", param_hint="VERSION") from None
    registry.set_champion(name, entry.version)
    asyncio.run(announce(settings, name, entry))
    typer.echo(f"{name} -> {entry.version} ({entry.card.get('family', '?')}) announced")


def retrain() -> None:
    """Run the retraining consumer until stopped (champion/challenger on the bars topic)."""
    from chaincast.deploy.metrics import serve_metrics

    settings = kafka_ready(_settings())
    if settings.metrics_port:
        serve_metrics(settings.metrics_port, settings.metrics_host)
    asyncio.run(_retrain(settings))


async def _retrain(settings: Settings) -> None:
    from chaincast.consumers.retrainer import run_retrainer

    # stops between polls; uncommitted bars are retrained on restart
    await run_until_signalled(lambda stop: run_retrainer(settings, stop))


def retrain_txs() -> None:
    """Run the transaction-value retrainer until stopped (challenger vs champion on chain.txs)."""
    from chaincast.deploy.metrics import serve_metrics

    settings = _settings()
    if not settings.kafka_bootstrap_servers:
        raise typer.BadParameter("the retrainer needs KAFKA_BOOTSTRAP_SERVERS")
    if settings.metrics_port:
        serve_metrics(settings.metrics_port, settings.metrics_host)
    asyncio.run(_retrain_txs(settings))


async def _retrain_txs(settings: Settings) -> None:
    from chaincast.consumers.retrainer import training_pool
    from chaincast.consumers.tx_retrainer import TxRetrainer

    with training_pool() as pool:  # torch trains in a child process: the consumer keeps reading
        await run_until_signalled(lambda stop: TxRetrainer(settings, pool=pool).run(stop))


def main() -> None:
    app = typer.Typer(add_completion=False)
    app.command()(retrain)
    run_app(app)


if __name__ == "__main__":
    main()

"""``chaincast bootstrap``: make sure a model serves before the workers start (a k8s Job, a compose service).

Workers forecast only with a model, and the retrainer promotes only a challenger that beats
persistence, so a fresh deployment would wait for ever. Bootstrap trains the initial model on
history (the bundled week unless ``--data``) and serves it only if it beats persistence on
validation data, otherwise persistence, explicitly (``--persistence`` skips the training).
It is idempotent: with a champion already in the registry it only announces it again.
``--wait`` is the init-container form: wait until a champion exists, train nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Optional

import typer

from chaincast.deploy.cli_args import DataOpt, check_files, load_settings


def bootstrap(
    data: DataOpt = None,
    persistence: Annotated[bool, typer.Option(help="Serve persistence (no training).")] = False,
    wait: Annotated[Optional[float], typer.Option(help="Only wait this many seconds for a champion.", min=1)] = None,
) -> None:
    """Train and gate the initial model (or serve persistence) and announce it; idempotent."""
    from chaincast.consumers.registry import Registry

    settings = load_settings()
    registry = Registry(settings.registry_dir)
    if wait is not None:
        deadline = time.monotonic() + wait
        while (entry := registry.champion(settings.model_name)) is None:
            if time.monotonic() > deadline:
                typer.echo(f"no champion of {settings.model_name} in {settings.registry_dir} after {wait:g}s", err=True)
                raise typer.Exit(1)
            time.sleep(2)
        typer.echo(f"{settings.model_name}: {entry.version} ({entry.card.get('family', '?')}) serves")
        return

    from chaincast.consumers.promotion import announce, initial_champion
    from chaincast.deploy.up import files_by_symbol
    from chaincast.models.history import HistoryFormatError, load_many
    from chaincast.stream.topics import ensure_topics

    try:
        files = files_by_symbol(check_files(data or []), settings.symbols)
        bars = [load_many(p) for p in files.values()]
    except (ValueError, HistoryFormatError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from None
    family = "persistence" if persistence else "linear"
    entry = initial_champion(registry, settings.model_name, bars, settings.window, settings.horizon, family=family)
    skill = entry.card.get("metrics", {}).get("val", {}).get("skill_vs_persistence", 0.0)
    typer.echo(f"{settings.model_name}: {entry.version} ({entry.card.get('family', '?')}, validation skill vs "
               f"persistence {skill:+.4f}) serves")
    if settings.kafka_bootstrap_servers:
        asyncio.run(ensure_topics(settings))
        asyncio.run(announce(settings, settings.model_name, entry))
        typer.echo("announced on the models topic")

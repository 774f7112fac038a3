"""Start-up checks every command that talks to Kafka makes before its first send: one line and exit 2 on failure."""

from __future__ import annotations

import asyncio

import typer

from chaincast.stream import kafka_options
from chaincast.stream.settings import Settings


def kafka_ready(settings: Settings) -> Settings:
    """The settings resolved for this cluster (replication factor); an unusable cluster ends the command.

    Unreachable brokers, refused credentials or TLS, too few brokers for the
    replication factor: one line on stderr, exit code 2, never a hang.
    """
    if not settings.kafka_bootstrap_servers:  # run_app prints it as the one `Error: ...` line, exit 2
        raise typer.BadParameter("KAFKA_BOOTSTRAP_SERVERS is not set (chaincast up starts an embedded broker)")
    try:
        return asyncio.run(kafka_options.resolve(settings))
    except kafka_options.KafkaSetupError as exc:
        raise typer.BadParameter(str(exc)) from None

"""``chaincast produce aggregator``: poll a CoinGecko-style price API into the trades topic."""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated, Optional

import typer


def produce_aggregator(
    url: Annotated[Optional[str], typer.Option(help="API base URL \\[env CHAINCAST_AGGREGATOR_URL].")] = None,
    ids: Annotated[Optional[str], typer.Option(help="SYMBOL=coin-id pairs \\[env CHAINCAST_AGGREGATOR_IDS].")] = None,
    rate: Annotated[Optional[float], typer.Option(help="Requests per minute \\[env CHAINCAST_AGGREGATOR_RATE_PER_MIN].",
                                                  min=0.001)] = None,
    interval: Annotated[Optional[float], typer.Option(help="Seconds between polls "
                                                      "\\[env CHAINCAST_AGGREGATOR_INTERVAL_S].", min=0.001)] = None,
    polls: Annotated[Optional[int], typer.Option(help="Stop after this many polls.", min=1)] = None,
) -> None:
    """Poll /simple/price (and backfill /coins/{id}/market_chart) into ticks.trades as coingecko:SYMBOL trades.

    The API key comes only from CHAINCAST_AGGREGATOR_API_KEY (never an option: a command line is
    visible to every local user) and is never logged.
    """
    from chaincast.deploy.cli_args import load_settings
    from aiokafka.errors import KafkaConnectionError

    from chaincast.producers.aggregator import coin_ids, run_aggregator

    settings = load_settings(CHAINCAST_AGGREGATOR_URL=url, CHAINCAST_AGGREGATOR_IDS=ids,
                             CHAINCAST_AGGREGATOR_RATE_PER_MIN=rate, CHAINCAST_AGGREGATOR_INTERVAL_S=interval)
    if not settings.kafka_bootstrap_servers:
        raise typer.BadParameter("set KAFKA_BOOTSTRAP_SERVERS (or run `chaincast up`)")
    try:
        coin_ids(settings)
    except ValueError as exc:  # a symbol without a coin id, an unknown quote currency
        raise typer.BadParameter(str(exc)) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        poller = await run_aggregator(settings, stop, polls)
        typer.echo(f"published {poller.published} trades, dead-lettered {poller.dead_lettered} responses")

    try:
        asyncio.run(main())
    except KafkaConnectionError as exc:
        typer.echo(f"chaincast: cannot reach the broker: {exc}", err=True)
        raise typer.Exit(1) from None

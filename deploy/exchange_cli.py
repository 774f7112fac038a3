"""CLI for the exchange side: ``chaincast exchange serve`` and ``chaincast produce exchange``.

The lead's CLI mounts ``serve_app`` as ``chaincast exchange`` and registers
``produce_exchange`` as ``chaincast produce exchange``. ``python -m
deploy.exchange_cli serve|produce ...`` runs either alone (``chaincast up``
starts them this way as child processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import typer

from chaincast.deploy.cli_args import load_settings, run_app
from chaincast.producers.exchange import VENUES, ProducerStats, run_exchange_producer
from chaincast.producers.exchange_server import LocalExchange, serve_exchange
from chaincast.deploy.preflight import kafka_ready
from chaincast.stream.shutdown import run_until_signalled

serve_app = typer.Typer(help="The local Binance-format exchange replaying real history.", no_args_is_help=True)


@serve_app.callback()
def _exchange_group() -> None:
    """Keep ``serve`` a named subcommand even though it is the only one."""


def parse_speed(text: str) -> float | None:
    """``max`` → None (as fast as clients read); otherwise market seconds per wall second."""
    if text.strip().lower() == "max":
        return None
    try:
        speed = float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number or 'max'", param_hint="--speed") from None
    if not speed > 0:
        raise typer.BadParameter("must be positive", param_hint="--speed")
    return speed


def parse_start(text: str | None) -> int | None:
    """ISO 8601 or epoch milliseconds → epoch ms."""
    if text is None:
        return None
    with contextlib.suppress(ValueError):
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither ISO 8601 nor epoch ms", param_hint="--start") from None
    return int(dt.replace(tzinfo=dt.tzinfo or timezone.utc).timestamp() * 1000)


@serve_app.command("serve")
def serve(
    data: list[Path] = typer.Option(..., "--data", help="History files (CSV/JSON, .gz ok), one symbol per name."),
    port: int = typer.Option(9443, min=0, max=65535, help="Port for websockets and REST (0: any free port)."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    speed: str = typer.Option("60", help="Market seconds per wall second, or 'max'."),
    start: str | None = typer.Option(None, help="Market time to start at (ISO 8601 or epoch ms); default: first bar."),
) -> None:
    """Run the local exchange: Binance paths /stream and /ws, REST /api/v3/aggTrades and /api/v3/klines."""
    settings = load_settings()
    missing = [str(p) for p in data if not p.exists()]
    if missing:
        raise typer.BadParameter(f"no such file: {', '.join(missing)}", param_hint="--data")
    speed_value, start_ms = parse_speed(speed), parse_start(start)

    def started(exchange: LocalExchange) -> None:
        # The one stdout line: a parent process (chaincast up, tests) reads the URL from it.
        typer.echo(exchange.url)

    async def run(stop: asyncio.Event) -> None:
        await serve_exchange(list(data), host, port, speed_value, start_ms, stop, started)

    try:
        asyncio.run(run_until_signalled(run))
    except (ValueError, OSError) as exc:  # bad history file, port in use: one line, not a traceback
        raise typer.BadParameter(str(exc)) from None


def produce_exchange(
    url: str | None = typer.Option(None, help="Binance-format websocket endpoint [env CHAINCAST_EXCHANGE_URL]."),
    symbols: str = typer.Option("btcusdt,ethusdt", help="Comma-separated symbols."),
    streams: str = typer.Option("trade,kline_1m", help="Comma-separated: trade or aggTrade, kline_1m."),
    duration: float | None = typer.Option(None, min=0, help="Stop after this many seconds (default: run until ^C)."),
    venue: str = typer.Option("binance", help=f"Wire format: {', '.join(VENUES)}."),
) -> None:
    """Publish an exchange's trades to Kafka (ticks.trades), resilient to drops, gaps and bad frames."""
    settings = load_settings()
    url = url or settings.exchange_url
    if not url:
        raise typer.BadParameter("give --url or set CHAINCAST_EXCHANGE_URL", param_hint="--url")
    if urlsplit(url).scheme not in ("ws", "wss"):
        raise typer.BadParameter(f"{url!r} is not a ws:// or wss:// URL", param_hint="--url")
    if venue not in VENUES:
        raise typer.BadParameter(f"unknown venue {venue!r}", param_hint="--venue")
    symbol_list = [s for s in symbols.replace(" ", "").split(",") if s]
    stream_list = [s for s in streams.replace(" ", "").split(",") if s]
    try:
        VENUES[venue].validate(symbol_list, stream_list)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--streams") from None
    settings = kafka_ready(settings)

    async def run(stop: asyncio.Event) -> ProducerStats:
        if duration is not None:
            asyncio.get_running_loop().call_later(duration, stop.set)
        return await run_exchange_producer(settings, url, symbol_list, stream_list, stop, venue)

    stats = asyncio.run(run_until_signalled(run))
    typer.echo(f"{stats.trades} trades published, {stats.duplicates} duplicates dropped, {stats.gaps} gaps "
               f"({stats.backfilled} backfilled, {stats.missing} missing), {stats.dead_letters} dead-lettered, "
               f"{stats.klines_closed} closed klines, {stats.connections} connection(s)")


def main() -> None:
    app = typer.Typer(no_args_is_help=True)
    app.add_typer(serve_app, name="exchange")
    app.command("produce")(produce_exchange)
    # ``python -m chaincast.deploy.exchange_cli serve ...`` is the common case: expose it at the top too.
    app.command("serve")(serve)
    run_app(app)


if __name__ == "__main__":
    main()

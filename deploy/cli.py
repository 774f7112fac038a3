"""The `chaincast` command."""

from __future__ import annotations

import asyncio
import math
from typing import Annotated, Optional

import typer

from chaincast.deploy import (aggregator_cli, api_cli, bench, bootstrap_cli, chain_cli, exchange_cli, fees_cli,
                              model_import_cli, models_cli, models_registry_cli, schema_cli)
from chaincast.deploy.cli_args import DataOpt, SymbolsOpt, check_files, load_settings, parse_speed, run_app
from chaincast.deploy.preflight import kafka_ready
from chaincast.stream.kafka_options import KafkaSetupError
from chaincast.stream.topics import DEFAULTS

__all__ = ["app", "check_files", "load_settings", "main", "parse_speed"]

app = typer.Typer(help="chaincast: streaming crypto forecasts (Kafka + Faust + ONNX, predictions in Redis).",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"chaincast {version('chaincast')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.", callback=_version,
                                          is_eager=True)] = False,
) -> None:
    """chaincast: streaming crypto forecasts (Kafka + Faust + ONNX, predictions in Redis)."""


@app.command()
def up(
    duration: Annotated[Optional[float], typer.Option(help="Stop after this many seconds.", min=1)] = None,
    speed: Annotated[str, typer.Option(help="Replay speed: market seconds per second, or 'max'.")] = "600",
    symbols: SymbolsOpt = None,
    data: DataOpt = None,
    chain: Annotated[str, typer.Option(help="Local chain when CHAINCAST_NODE_URL is unset: 'replay' (real "
                                            "mainnet blocks) or 'hardhat' (an empty dev chain).")] = "replay",
    chain_speed: Annotated[str, typer.Option(help="Replay node: block time per wall time, or 'max'.")] = "12",
    chain_reorg_every: Annotated[int, typer.Option(help="Replay node: fork the newest 1..3 blocks every N heads "
                                                        "(0 = never).", min=0)] = 0,
) -> None:
    """Run the whole system on this machine (embedded broker and Redis unless configured)."""
    from chaincast.deploy.up import ChainOptions, run_up

    settings = load_settings(CHAINCAST_SYMBOLS=symbols)
    replay_speed = parse_speed(speed)
    if chain not in ("replay", "hardhat"):
        raise typer.BadParameter(f"--chain must be 'replay' or 'hardhat', not {chain!r}")
    options = ChainOptions(source=chain, speed=parse_speed(chain_speed), reorg_every=chain_reorg_every)
    try:
        code = run_up(settings, check_files(data or []), duration, replay_speed,
                      echo=lambda s: typer.echo(s, nl=not s.startswith("\r")), chain=options)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    except KafkaSetupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@app.command()
def worker() -> None:
    """Run one stream worker (bars + predict agents) until stopped."""
    from chaincast.deploy.metrics import serve_metrics
    from chaincast.stream.app import run_worker

    settings = load_settings()
    if not settings.redis_url or not settings.kafka_bootstrap_servers:
        raise typer.BadParameter("a worker needs KAFKA_BOOTSTRAP_SERVERS and REDIS_URL")
    # No kafka_ready() preflight here: unlike the interactive commands, a worker waits for an
    # unreachable broker (reconnect with backoff, as during a run); run_worker resolves the
    # settings for the cluster once it answers, and a cluster that refuses them still exits 2.
    if settings.metrics_port:
        serve_metrics(settings.metrics_port, settings.metrics_host)
    try:
        run_worker(settings)
    except KafkaSetupError as exc:  # refused credentials/TLS, too few brokers, fewer replicas than asked...
        raise typer.BadParameter(str(exc)) from None  # run_app: the one `Error: ...` line, exit 2


@app.command()
def replay(
    data: DataOpt = None,
    speed: Annotated[str, typer.Option(help="Market seconds per second, or 'max'.")] = "max",
    symbols: SymbolsOpt = None,
    from_ts: Annotated[Optional[int], typer.Option(help="Skip bars before this open time (ms).")] = None,
) -> None:
    """Replay history files into the trades topic as trades."""
    from chaincast.deploy.metrics import serve_metrics
    from chaincast.deploy.up import files_by_symbol
    from chaincast.producers.replay import Market, replay as run_replay
    from chaincast.models.history import TS, load_many

    settings = kafka_ready(load_settings(CHAINCAST_SYMBOLS=symbols))
    try:
        files = files_by_symbol(check_files(data or []), settings.symbols)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    markets = []
    for sym, paths in files.items():
        bars = load_many(paths)
        markets.append(Market(sym, bars if from_ts is None else bars[bars[:, TS] >= from_ts]))
    if settings.metrics_port:
        serve_metrics(settings.metrics_port, settings.metrics_host)
    sent = asyncio.run(run_replay(settings, markets, parse_speed(speed)))
    typer.echo(f"replayed {sent} trades")


@app.command()
def predictions(symbol: Annotated[Optional[str], typer.Argument(help="One symbol; all when omitted.")] = None) -> None:
    """Show the latest forecasts from Redis (every forecaster of each symbol)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from chaincast.stream.forecasts import ForecastReader, forecaster_id

    settings = load_settings()
    if not settings.redis_url:
        raise typer.BadParameter("set REDIS_URL to the Redis that chaincast writes to (or run `chaincast up`)")
    symbols = [symbol.upper()] if symbol else settings.symbols

    async def read() -> list:
        reader = ForecastReader(settings)
        try:
            return await reader.latest(symbols)
        finally:
            await reader.close()

    try:
        latest = asyncio.run(read())
    except (RedisConnectionError, OSError) as exc:
        raise typer.BadParameter(f"cannot reach Redis: {exc}") from None
    for sym in symbols:
        mine = [p for p in latest if p.symbol == sym]
        if not mine:
            typer.echo(f"{sym}: no prediction yet")
        for p in mine:
            if p.price_hat is None:  # not a price forecast (volatility): the forecast and its band as they are
                typer.echo(f"{sym} {forecaster_id(p)} bar {p.bar_ts}: {p.y_hat:.6f} "
                           f"(80% band {p.q10:.6f} .. {p.q90:.6f}) model {p.model_name} {p.model_version}")
                continue
            typer.echo(f"{sym} {forecaster_id(p)} bar {p.bar_ts}: {p.price:.4f} -> {p.price_hat:.4f} "
                       f"(80% band {p.price * math.exp(p.q10):.4f} .. {p.price * math.exp(p.q90):.4f}) "
                       f"model {p.model_name} {p.model_version}")


@app.command()
def tail(
    topic: Annotated[Optional[str], typer.Argument(
        help="Topic to follow.", show_default=f"the predictions topic: {DEFAULTS['topic_predictions']}")] = None,
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest message.")] = False,
    limit: Annotated[Optional[int], typer.Option(help="Stop after this many messages.", min=1)] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Stop after this many idle seconds.", min=0.1)] = None,
) -> None:
    """Print messages from a topic as they arrive (key<TAB>value)."""
    from chaincast.deploy.tail import follow

    settings = kafka_ready(load_settings())
    asyncio.run(follow(settings, topic or settings.topic_predictions, from_beginning, limit, timeout, typer.echo))


# Commands that live beside their stage's code (each sub-app imports cli_args, never this module).
produce_app = typer.Typer(help="Run one producer alone.", no_args_is_help=True)


@produce_app.callback()
def _produce() -> None:
    """Producers serve their metrics like every chaincast process."""
    from chaincast.deploy.metrics import serve_metrics

    settings = load_settings()
    if settings.metrics_port:
        serve_metrics(settings.metrics_port, settings.metrics_host)


produce_app.command("exchange")(exchange_cli.produce_exchange)
produce_app.command("chain")(chain_cli.chain)
produce_app.command("aggregator")(aggregator_cli.produce_aggregator)
app.add_typer(produce_app, name="produce")
app.add_typer(exchange_cli.serve_app, name="exchange")
app.add_typer(fees_cli.chain_app, name="chain")
app.command("retrain-fees")(fees_cli.retrain_fees)
app.command("train", context_settings=models_cli.EXTRA)(models_cli.train)
app.command("backtest", context_settings=models_cli.EXTRA)(models_cli.backtest)
models_registry_cli.models_app.command("import")(model_import_cli.import_model)
app.add_typer(models_registry_cli.models_app, name="models")
app.command("retrain")(models_registry_cli.retrain)
app.command("retrain-txs")(models_registry_cli.retrain_txs)
app.command("api")(api_cli.api)
app.command("page", help="Same as `api`: the live page is served by the API at /.")(api_cli.api)
app.add_typer(api_cli.token_app, name="token")
app.command("schema")(schema_cli.schema)
app.command("bootstrap")(bootstrap_cli.bootstrap)
app.command("bench")(bench.bench)


def main(argv: list[str] | None = None) -> None:
    run_app(app, argv)


if __name__ == "__main__":
    main()

"""`chaincast bench`: throughput, latency, scale and footprint of the real system on this machine.

Everything runs on real parts: the embedded broker and Redis (unless
KAFKA_BOOTSTRAP_SERVERS / REDIS_URL point elsewhere), real worker processes
(``chaincast worker``) read through their own metrics endpoints and ``/proc``,
and real history (the bundled bar files) turned into synthetic trades.

The package, by seam:
- ``plan``: sizes, markets and the messages each phase sends (pure);
- ``harness``: the processes (workers, bare-Faust counter), pre-loading, the drain loop;
- ``latency``: timed bar closes read back with ``XREAD BLOCK``;
- ``scan``: cost versus the number of markets;
- ``peer``: the same bars job written with Quix Streams, timed the same way;
- ``profile``: where a forecast's milliseconds go (cProfile of a worker);
- ``soak``: ``--soak SECONDS``, a long max-speed run: does the forecast rate hold as partitions grow;
- ``report``: the machine, the code measured, the tables;
- ``run``: one run, phase by phase.

This module holds only the command, so that ``chaincast --help`` imports none of it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

DEFAULT_SCAN = "4,64,512"


def parse_sizes(value: str) -> tuple[int, ...]:
    """``4,64,512`` -> (4, 64, 512); ``none`` -> () (no scan).

    >>> parse_sizes("4, 64"), parse_sizes("none")
    ((4, 64), ())
    """
    if value.strip().lower() in ("", "none", "0"):
        return ()
    try:
        sizes = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"--scan must be comma-separated market counts or 'none', not {value!r}") from None
    if any(n < 1 for n in sizes) or list(sizes) != sorted(set(sizes)):
        raise typer.BadParameter(f"--scan must be increasing positive market counts, not {value!r}")
    return sizes


def bench(
    duration: Annotated[float, typer.Option(help="Time budget of the throughput backlog in seconds; its size "
                                                 "scales with it.", min=30, max=600)] = 200.0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON here.")] = None,
    data: Annotated[Optional[list[Path]], typer.Option("--data", help="History file(s); repeat the option.")] = None,
    workers_scaling: Annotated[bool, typer.Option(help="Also measure two workers against one.")] = True,
    trades_per_bar: Annotated[int, typer.Option(help="Synthetic trades per 1-minute bar (real BTC/ETH minutes: "
                                                     "430 to 2,444).", min=4, max=10_000)] = 500,
    closes: Annotated[int, typer.Option(help="Bar closes timed for latency (the first second is left out).",
                                        min=50, max=100_000)] = 2_100,
    scan: Annotated[str, typer.Option(help="Market counts of the symbol scan, or 'none'.")] = DEFAULT_SCAN,
    kafka: Annotated[bool, typer.Option(help="Start Apache Kafka (one KRaft node, deploy/kafka) for the run "
                                             "instead of the embedded broker (KAFKA_BOOTSTRAP_SERVERS wins).")] = False,
    closes_per_s: Annotated[float, typer.Option(help="Timed bar closes per second, all markets together.",
                                                min=1, max=1_000)] = 40.0,
    peer: Annotated[bool, typer.Option(help="Also run the Quix Streams peer on the same backlog.")] = True,
    floor: Annotated[bool, typer.Option(help="Also time the same closes through bare relays (aiokafka, Faust) "
                                             "without chaincast: the latency floor.")] = True,
    profile: Annotated[Optional[Path], typer.Option(help="Also profile a worker (cProfile) through timed closes: "
                                                         "its profile goes to this file, the stage breakdown "
                                                         "into the results.")] = None,
    soak: Annotated[Optional[float], typer.Option(help="Instead of the bench: a max-speed run of this many seconds "
                                                       "(600 for the check); reports the forecast rate of its "
                                                       "first and last minute.", min=60, max=7200)] = None,
) -> None:
    """Measure throughput, latency, scale-out, cost per market, footprint and a peer on the real system."""
    from chaincast.deploy.bench.plan import BenchPlan, files_of
    from chaincast.deploy.bench.report import table
    from chaincast.deploy.bench.run import run_bench
    from chaincast.deploy.cli_args import check_files, load_settings
    from chaincast.deploy.up import bundled_files

    settings = load_settings()
    sizes = parse_sizes(scan)
    if peer and importlib.util.find_spec("quixstreams") is None:
        raise typer.BadParameter("the peer needs Quix Streams: pip install quixstreams, or pass --no-peer")
    try:
        files = files_of(check_files(data)) if data else bundled_files(["BTCUSDT", "ETHUSDT"])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    for path in (json_out, profile):
        if path is not None and not path.parent.is_dir():
            raise typer.BadParameter(f"no such directory: {path.parent}")
    log_dir = settings.home / "logs" / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    if soak is not None:
        from chaincast.deploy.bench.soak import run_soak, soak_table

        result = run_soak(settings, soak, files, log_dir, typer.echo, kafka=kafka)
        typer.echo("\n" + soak_table(result))
        if json_out is not None:
            json_out.write_text(json.dumps(result, indent=2) + "\n")
            typer.echo(f"wrote {json_out}")
        return
    plan = BenchPlan.for_duration(duration, scaling=workers_scaling, trades_per_bar=trades_per_bar,
                                  latency_closes=closes, closes_per_s=closes_per_s, scan_sizes=sizes, peer=peer,
                                  floor=floor)
    try:
        result = run_bench(settings, plan, files, log_dir, typer.echo, profile_out=profile, kafka=kafka)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo("\n" + table(result))
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        typer.echo(f"wrote {json_out}")

"""Run every dashboard query against a real Prometheus scraping a running chaincast.

    python -m chaincast.deploy.prometheus.verify_dashboards                 # starts `chaincast up` itself
    python -m chaincast.deploy.prometheus.verify_dashboards --targets worker=127.0.0.1:9464,producer=127.0.0.1:9465

Starts the Debian ``prometheus`` binary on a free loopback port with a scrape
config for the targets (every 2 s, the alert rules loaded), waits until the
worker has written predictions, then sends each panel query (Grafana variables
expanded) to the HTTP API until all return data or the time is up, and prints
a table: which queries returned data and, for those that did not, which of
their metrics no scraped process exports. Exit status 0 when every query
returned data.

With no ``--targets`` it runs ``chaincast up --duration`` (serving ``log_return:1,volatility:5``
unless CHAINCAST_FORECASTS says otherwise) on a free block of
metrics ports with its own home directory, and (unless ``--no-bad-input``)
sends one malformed message to the trades topic so that the dead-letter
panels have something to show.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from chaincast.deploy.embedded import Process, free_port, wait_for_port
from chaincast.deploy.grafana.queries import PanelQuery, all_queries, expand
from chaincast.models.logs import setup_logging
from chaincast.stream.topics import DEFAULTS

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
ALERTS = HERE / "alerts.yml"
# Offsets from CHAINCAST_METRICS_PORT, as documented in deploy/README.md.
PROCESS_PORTS = {"worker": 0, "producer": 1, "chain": 2, "retrainer": 3}  # as deploy/up.py
FALLBACK = " or vector(0)"
VOL_TOO = "log_return:1,volatility:5"  # the volatility panels need a volatility forecaster (queries.expand's)
METRIC = re.compile(r"\b(chaincast_[a-z0-9_]+|up)\b")


@dataclass
class Result:
    query: PanelQuery
    series: int = 0
    error: str = ""
    zero_fallback: bool = False  # data only from the query's "or vector(0)"

    @property
    def ok(self) -> bool:
        return self.series > 0 and not self.error


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise SystemExit("no `prometheus` binary on PATH: apt-get install -y prometheus")
    return path


def scrape_config(targets: dict[str, str], interval: str = "2s") -> str:
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{
            "job_name": "chaincast",
            "static_configs": [{"targets": [addr], "labels": {"process": name}} for name, addr in targets.items()],
        }],
    }
    return json.dumps(config, indent=2)  # JSON is YAML


@contextlib.contextmanager
def prometheus(targets: dict[str, str], workdir: Path) -> Iterator[str]:
    """A real Prometheus scraping ``targets``; yields its base URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(scrape_config(targets))
    port = free_port()
    proc = Process("prometheus", [prometheus_binary(), f"--config.file={config}",
                                  f"--storage.tsdb.path={workdir / 'data'}",
                                  f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                   log_path=workdir / "prometheus.log").start()
    try:
        wait_for_port(port, proc.popen, 30, "prometheus")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop(timeout=10)


def api(base: str, path: str, **params: str) -> dict:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:  # a bad query answers 400 with a JSON error
        return json.load(exc)


def instant(base: str, expr: str) -> Result:
    body = api(base, "query", query=expr)
    if body.get("status") != "success":
        return Result(PanelQuery("", "", expr), error=body.get("error", "query failed"))
    return Result(PanelQuery("", "", expr), series=len(body["data"]["result"]))


def exported_metrics(base: str) -> set[str]:
    return set(api(base, "label/__name__/values").get("data", []))


def exporters(base: str, metrics: set[str]) -> dict[str, list[str]]:
    """The processes that export each metric (a worker also exports, say, the retrainer's
    unlabelled histograms at zero, because it imports the module that defines them)."""
    out = {}
    for m in metrics:
        body = api(base, "query", query=f'count by (process) ({{__name__="{m}"}})')
        out[m] = sorted(r["metric"].get("process", "?") for r in body.get("data", {}).get("result", []))
    return out


def run_queries(base: str, queries: list[PanelQuery], symbol: str, deadline: float) -> list[Result]:
    """Ask every query until it returns data once, or until the deadline."""
    results = {i: Result(q) for i, q in enumerate(queries)}
    while True:
        for i, res in results.items():
            if res.ok:
                continue
            got = instant(base, expand(res.query.expr, "1m", symbol))
            res.series, res.error = got.series, got.error
            if res.ok and res.query.expr.endswith(FALLBACK):
                res.zero_fallback = not instant(base, expand(res.query.expr.removesuffix(FALLBACK), "1m", symbol)).ok
        if all(r.ok for r in results.values()) or time.monotonic() > deadline:
            return list(results.values())
        time.sleep(2.0)


def wait_for(base: str, expr: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if instant(base, expr).ok:
            return True
        time.sleep(1.0)
    return False


def table(results: list[Result], known: set[str], sources: dict[str, list[str]]) -> str:
    lines = ["| dashboard | panel | query | data | exported by |", "|---|---|---|---|---|"]
    for r in results:
        names = sorted(set(METRIC.findall(r.query.expr)) - {"up"})
        by = "; ".join(f"{','.join(sources.get(m, [])) or '-'}" for m in names) or "all"
        if r.ok:
            verdict = f"yes ({r.series} series)" + (", the zero fallback: no event yet" if r.zero_fallback else "")
        elif r.error:
            verdict = f"ERROR {r.error}"
        else:
            missing = sorted({m for m in METRIC.findall(r.query.expr) if m != "up"}
                             - {m.removesuffix("_bucket") for m in known} - known)
            verdict = "no: not exported: " + ", ".join(missing) if missing else "no: series exist, result empty"
        expr = r.query.expr.replace("|", "\\|")
        lines.append(f"| {r.query.dashboard} | {r.query.panel} | `{expr}` | {verdict} | {by} |")
    return "\n".join(lines)


def free_block(size: int) -> int:
    """A base port with ``size`` consecutive free ports after it."""
    for _ in range(200):
        base = free_port()
        if base + size >= 65535:
            continue
        ok = True
        for port in range(base, base + size):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no block of free ports")


@contextlib.contextmanager
def chaincast_up(workdir: Path, duration: float) -> Iterator[tuple[dict[str, str], Path]]:
    """`chaincast up` in the background; yields the targets and the path of its output."""
    base = free_block(17)  # the metrics ports and the live page at +16
    out = workdir / "up.log"
    env = {**os.environ, "CHAINCAST_HOME": str(workdir / "home"), "CHAINCAST_METRICS_PORT": str(base),
           "PYTHONUNBUFFERED": "1", "CHAINCAST_FORECASTS": os.environ.get("CHAINCAST_FORECASTS", VOL_TOO)}
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "CHAINCAST_EXCHANGE_URL"):
        env.pop(name, None)
    proc = Process("up", [sys.executable, "-m", "chaincast.deploy.cli", "up", "--duration", str(duration)], env=env,
                   log_path=out).start()
    try:
        yield {name: f"127.0.0.1:{base + off}" for name, off in PROCESS_PORTS.items()}, out
    finally:
        proc.stop(timeout=60)


def broker_of(up_log: Path, deadline: float) -> str | None:
    while time.monotonic() < deadline:
        if m := re.search(r"embedded broker \(tansu\) on (\S+)", up_log.read_text(errors="replace")):
            return m.group(1)
        time.sleep(0.5)
    return None


async def send_bad_trade(bootstrap: str, topic: str = DEFAULTS["topic_trades"]) -> None:
    """One malformed message on the trades topic: the bars agent must dead-letter it."""
    from aiokafka import AIOKafkaProducer

    from chaincast.stream import kafka_options
    from chaincast.stream.settings import Settings

    # `chaincast up` printed this broker: the embedded one.
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS=bootstrap, CHAINCAST_EMBEDDED_BROKER=True)
    producer = AIOKafkaProducer(**kafka_options.producer(settings))
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"not": "a trade"', key=b"binance:BTCUSDT")
    finally:
        await producer.stop()


def verify(targets: dict[str, str] | None, *, duration: float, timeout: float, symbol: str,
           bad_input: bool, workdir: Path) -> tuple[list[Result], set[str], dict[str, list[str]]]:
    with contextlib.ExitStack() as stack:
        start = time.monotonic()
        up_log = None
        if targets is None:
            targets, up_log = stack.enter_context(chaincast_up(workdir, duration))
        base = stack.enter_context(prometheus(targets, workdir / "prometheus"))
        deadline = start + timeout
        if up_log is not None and bad_input:
            if bootstrap := broker_of(up_log, deadline):
                asyncio.run(send_bad_trade(bootstrap))
        if not wait_for(base, "sum(chaincast_predictions_total) > 0", deadline):
            log.warning("no prediction reached Prometheus in time; querying anyway")
        time.sleep(6)  # a few more scrapes, so that rate() windows hold two samples
        results = run_queries(base, all_queries(), symbol, deadline)
        names = {m for r in results for m in METRIC.findall(r.query.expr)} - {"up"}
        return results, exported_metrics(base), exporters(base, names)


def parse_targets(text: str) -> dict[str, str]:
    out = {}
    for item in text.split(","):
        name, _, addr = item.partition("=")
        if not addr:
            raise argparse.ArgumentTypeError(f"expected process=host:port, not {item!r}")
        out[name.strip()] = addr.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=parse_targets, help="process=host:port,... of a running chaincast")
    parser.add_argument("--duration", type=float, default=240, help="seconds `chaincast up` runs (own mode)")
    parser.add_argument("--timeout", type=float, default=200, help="seconds to wait for every query's data")
    parser.add_argument("--symbol", default="BTCUSDT", help="value of the $symbol variable")
    parser.add_argument("--no-bad-input", dest="bad_input", action="store_false",
                        help="do not send a malformed trade (own mode)")
    parser.add_argument("--keep", type=Path, help="keep logs and data in this directory")
    args = parser.parse_args(argv)
    setup_logging(logging.INFO, "%(levelname)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="cc-verify-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        results, known, sources = verify(args.targets, duration=args.duration, timeout=args.timeout, symbol=args.symbol,
                                bad_input=args.bad_input, workdir=workdir)
    print(table(results, known, sources))
    good = sum(r.ok for r in results)
    print(f"\n{good}/{len(results)} dashboard queries returned data")
    return 0 if good == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""`chaincast up`: the whole system on one machine.

Embedded broker and Redis (unless KAFKA_BOOTSTRAP_SERVERS / REDIS_URL point
elsewhere), topics, an initial model gated against persistence, and as child
processes a stream worker, the local exchange replaying the bundled history
(unless CHAINCAST_EXCHANGE_URL points at a real one) and the exchange producer, and a live status line
built from the children's own metrics endpoints. Everything stops cleanly at
the end of ``duration`` or on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

import threading

from chaincast.consumers.fee_promotion import initial_fee_champions
from chaincast.consumers.promotion import announce, initial_champion
from chaincast.consumers.registry import Registry
from chaincast.deploy.embedded import EmbeddedError, Process, embedded_stack, free_port, wait_for_port
from chaincast.deploy.hardhat import start_hardhat
from chaincast.deploy.metrics import scrape
from chaincast.deploy.tokens import TokenStore
from chaincast.models.blocks import NUMBER, load_blocks
from chaincast.models.history import TS, load_many, symbol_of
from chaincast.models.timeunits import DAY_MS, MINUTE_MS
from chaincast.stream import kafka_options
from chaincast.stream.failure import EXIT_UNACKNOWLEDGED
from chaincast.stream.predict import history_size
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.files import write_atomic
from chaincast.stream.settings import Settings
from chaincast.stream.shutdown import sigterm_as_interrupt
from chaincast.stream.topics import ensure_topics

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).parent / "data"
TRAIN_DAYS = 5  # the bundled week: the initial model learns on days 1-5, the local exchange plays days 6-7
PAGE_PORT_OFFSET = 16  # the API and live page: 9480 beside the default metrics base 9464
UP_TOKEN_TTL_S = 7 * 86400
BLOCKS_FILE = DATA_DIR / "mainnet_blocks_18620000_18649999.csv.gz"
TRAIN_BLOCKS = 25_000  # the bundled blocks: the initial fee models learn on the first 25k, the replay node plays the rest


@dataclass(frozen=True)
class ChainOptions:
    """Where `up` takes blocks from when CHAINCAST_NODE_URL is unset: the replay node or Hardhat."""

    source: str = "replay"  # "replay" (real mainnet blocks, fee forecasts move) or "hardhat" (empty dev chain)
    data: Path = BLOCKS_FILE
    speed: float | None = 12.0  # block time per wall time: 12 = one block a second
    reorg_every: int = 0  # the replay node forks the newest 1..3 blocks every N heads (0 = never)


def bundled_files(symbols: list[str]) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in sorted(DATA_DIR.glob("*.csv.gz")):
        if (sym := symbol_of(path)) in symbols:
            found.setdefault(sym, []).append(path)
    return found


def files_by_symbol(paths: list[Path], symbols: list[str]) -> dict[str, list[Path]]:
    """Group history files by the symbol in their name; every symbol needs one."""
    if not paths:
        files = bundled_files(symbols)
    else:
        files = {}
        for p in paths:
            sym = symbol_of(p)
            if sym is None:
                raise ValueError(f"cannot tell the symbol of {p}: name it like BTCUSDT-1m-....csv")
            files.setdefault(sym, []).append(p)
    missing = [s for s in symbols if s not in files]
    if missing:
        raise ValueError(f"no history file for {', '.join(missing)}")
    return {s: files[s] for s in symbols}


@dataclass
class Status:
    started: float = field(default_factory=time.monotonic)
    first_forecast_s: float | None = None
    trades: float = 0
    bars: float = 0
    predictions: float = 0
    latest: dict[str, dict[str, str]] = field(default_factory=dict)
    fee: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        parts = [f"t={time.monotonic() - self.started:5.1f}s trades={int(self.trades)} bars={int(self.bars)} "
                 f"predictions={int(self.predictions)}"]
        for sym, p in sorted(self.latest.items()):
            if "price_hat" not in p:  # the default forecaster forecasts volatility: no price
                parts.append(f"{sym} {p.get('target')} {float(p['y_hat']):.6f} [{float(p['q10']):.6f},"
                             f"{float(p['q90']):.6f}] v{p['model_version']}")
                continue
            parts.append(f"{sym} {float(p['price']):.2f}->{float(p['price_hat']):.2f} "
                         f"[{float(p['price']) * math.exp(float(p['q10'])):.2f},"
                         f"{float(p['price']) * math.exp(float(p['q90'])):.2f}] v{p['model_version']}")
        f = self.fee
        if "base_fee.h1.forecast_gwei" in f:
            parts.append(f"block {f['block']} {float(f['base_fee_gwei']):.2f} gwei -> "
                         f"{float(f['base_fee.h1.forecast_gwei']):.2f} (h1), "
                         + (f"{float(f['base_fee.h25.forecast_gwei']):.2f} (h25)" if "base_fee.h25.forecast_gwei" in f
                            else ""))
        return " | ".join(parts)


def env_lines(env: dict[str, str]) -> str:
    """``export`` lines a shell can source and the settings loader reads (as a dotenv file).

    >>> print(env_lines({"REDIS_URL": "redis://127.0.0.1:6390/0", "CHAINCAST_SYMBOLS": "BTCUSDT,ETHUSDT"}), end="")
    export REDIS_URL=redis://127.0.0.1:6390/0
    export CHAINCAST_SYMBOLS=BTCUSDT,ETHUSDT
    """
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def publish_env(settings: Settings, echo: Callable[[str], None]) -> str:
    """Write the stack's connection settings to ``$CHAINCAST_HOME/env`` (mode 0600: a Redis URL may hold a
    password) and show them; every chaincast command in another shell reads the file for what its
    environment leaves unset. Returns the text written."""
    path = settings.stack_env_file
    text = env_lines(settings.stack_env())
    write_atomic(path, text, mode=0o600)
    echo(f"other shells find this stack through {path}; or export:")
    for line in text.splitlines():
        secret = line.startswith("export REDIS_URL=") and "@" in line
        echo("  " + (line.split("=", 1)[0] + "=<in the file: it holds a password>" if secret else line))
    return text


def withdraw_env(settings: Settings, text: str) -> None:
    """Remove the env file at shutdown, unless another `up` has replaced it since."""
    with contextlib.suppress(FileNotFoundError):
        if settings.stack_env_file.read_text() == text:
            settings.stack_env_file.unlink()


# What `chaincast up` serves when CHAINCAST_FORECASTS is unset (a worker alone serves the return only).
UP_FORECASTS = "log_return:{horizon},volatility:5"


def child(name: str, args: list[str], settings: Settings, log_dir: Path, metrics_port: int) -> Process:
    env = {**os.environ, **settings.env(), "CHAINCAST_METRICS_PORT": str(metrics_port), "PYTHONUNBUFFERED": "1"}
    return Process(name, [sys.executable, "-m", "chaincast.deploy.cli", *args], env=env,
                   log_path=log_dir / f"{name}.log").start()


def start_fee_models(settings: Settings, options: ChainOptions, echo: Callable[[str], None]) -> threading.Thread:
    """Train (first start only), gate and announce the fee models in the background: the stream
    starts at once, and the worker hot-swaps each fee model in as it is announced."""
    blocks = load_blocks(options.data).blocks[:TRAIN_BLOCKS]

    def announced(name: str, entry) -> None:  # noqa: ANN001 - a ModelEntry
        asyncio.run(announce(settings, name, entry))
        echo(f"\nserving {name} {entry.version} ({entry.card['family']}, validation skill vs "
             f"{entry.card['reference']} {entry.card['metrics']['val'].get('skill_vs_reference', 0.0):+.4f})")

    def run() -> None:
        try:
            initial_fee_champions(Registry(settings.registry_dir), settings, blocks, on_champion=announced)
        except Exception:  # a thread's failure must be seen, not vanish; the market path runs on
            log.exception("fee models could not be trained; no fee forecasts")

    thread = threading.Thread(target=run, name="fee-models", daemon=True)
    thread.start()
    return thread


def run_up(settings: Settings, paths: list[Path], duration: float | None, speed: float | None,
           echo: Callable[[str], None], chain: ChainOptions | None = None) -> int:
    chain = chain or ChainOptions()
    if settings.forecasts is None:  # the demo serves what carries information: volatility beside the return
        settings = settings.model_copy(update={"forecasts": UP_FORECASTS.format(horizon=settings.horizon)})
    files = files_by_symbol(paths, settings.symbols)
    log_dir = settings.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    want_broker, want_redis = settings.kafka_bootstrap_servers is None, settings.redis_url is None
    with sigterm_as_interrupt(), embedded_stack(log_dir, broker=want_broker, redis=want_redis) as env:
        if want_broker:
            settings = settings.model_copy(update={"kafka_bootstrap_servers": env["KAFKA_BOOTSTRAP_SERVERS"],
                                                   "embedded_broker": True})
            echo(f"embedded broker (tansu) on {settings.kafka_bootstrap_servers}")
        if want_redis:
            settings = settings.model_copy(update={"redis_url": env["REDIS_URL"]})
            echo(f"embedded Redis on {settings.redis_url}")
        settings = asyncio.run(kafka_options.resolve(settings))
        asyncio.run(ensure_topics(settings))

        bars = {sym: load_many(p) for sym, p in files.items()}
        train_end = min(b[0, TS] for b in bars.values()) + TRAIN_DAYS * DAY_MS
        echo("training the initial models (first start only) ...")
        specs = settings.forecast_specs
        for spec in specs:  # one champion per served forecaster of CHAINCAST_FORECASTS
            name = spec.model_name(settings.model_name, default=spec == specs[0])
            entry = initial_champion(Registry(settings.registry_dir), name,
                                     [b[b[:, TS] < train_end] for b in bars.values()], settings.window, spec.horizon,
                                     target=spec.target)
            asyncio.run(announce(settings, name, entry))
            echo(f"serving {name} {entry.version} ({entry.card['family']}, {spec.label}, "
                 f"test skill vs persistence {entry.card['metrics']['test']['skill_vs_persistence']:+.4f})")

        replay_from = int(train_end - history_size(settings.window) * MINUTE_MS)
        api_port = settings.metrics_port + PAGE_PORT_OFFSET if settings.metrics_port else free_port()
        settings = settings.model_copy(update={"api_url": f"http://127.0.0.1:{api_port}"})
        procs, ports = start_processes(settings, files, replay_from, speed, log_dir, echo, chain)
        if "chain" in ports and settings.node_url is None and chain.source == "replay":
            start_fee_models(settings, chain, echo)
        if "chain" in ports:  # fee challengers on the recent blocks, promoted only when better
            procs.append(child("fee-retrainer", ["retrain-fees"], settings, log_dir, 0))
        procs.append(child("api", ["api", "--port", str(api_port)], settings, log_dir, 0))
        token, _ = TokenStore.in_home(settings.home).create("up", ["read"], ttl_s=UP_TOKEN_TTL_S)
        echo(f"API and live page: {settings.api_url}/  (OpenAPI docs at /docs)")
        echo(f"first API token (valid 7 days, shown once): {token}")
        echo(f"  curl -H 'Authorization: Bearer {token}' {settings.api_url}/v1/forecasts")
        echo(f"  live page: {settings.api_url}/#token={token}")
        echo("metrics: " + ", ".join(f"{name} :{port}" for name, port in ports.items()) + f"; logs in {log_dir}")
        status = Status()
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        code = 0
        env_file = publish_env(settings, echo)
        try:
            deadline = None if duration is None else time.monotonic() + duration
            stopped_at: dict[str, float] = {}  # workers that exited 75, awaiting their restart
            restart_delay = kafka_options.restart_delay_s(settings)
            while deadline is None or time.monotonic() < deadline:
                time.sleep(1.0)
                now = time.monotonic()
                for p in procs:  # a worker that stopped before acknowledging a batch is restarted, as k8s would
                    if p.name == "worker" and not p.alive() and p.popen.returncode == EXIT_UNACKNOWLEDGED:
                        if (since := stopped_at.setdefault(p.name, now)) == now:
                            echo(f"\nthe worker stopped before acknowledging a batch; restarting it in "
                                 f"{restart_delay:.0f} s (see {log_dir}/worker.log)")
                        if now - since >= restart_delay:
                            del stopped_at[p.name]
                            p.start()
                crashed = [p.name for p in procs if p.name in ("worker", "producer", "chain", "api")
                           and not p.alive() and p.name not in stopped_at]
                if crashed:
                    echo(f"\nthe {crashed[0]} stopped unexpectedly; see {log_dir}/{crashed[0]}.log")
                    code = 1
                    break
                _refresh(status, client, settings, ports)
                echo("\r" + status.line())
        except KeyboardInterrupt:
            echo("\nstopping ...")
        finally:
            withdraw_env(settings, env_file)
            for p in reversed(procs):
                p.stop(timeout=15)
            client.close()
        echo("")
        if status.first_forecast_s is not None:
            echo(f"first forecast after {status.first_forecast_s:.1f}s; {int(status.predictions)} predictions")
        elif code == 0:
            echo("no forecast was produced")
            code = 1
    return code


def start_replay_node(settings: Settings, chain: ChainOptions, log_dir: Path) -> tuple[Process, str, int]:
    """The replay node on a free port, its head just after the initial fee models' training blocks;
    returns (process, websocket URL, the block the follower starts from: a window before the head)."""
    blocks = load_blocks(chain.data).blocks
    start = int(blocks[min(TRAIN_BLOCKS, len(blocks) - 1), NUMBER])
    port = free_port()
    args = ["chain", "serve", "--data", str(chain.data), "--port", str(port), "--start", str(start),
            "--speed", "max" if chain.speed is None else str(chain.speed), "--reorg-every", str(chain.reorg_every)]
    proc = child("node", args, settings, log_dir, 0)
    wait_for_port(port, proc.popen, 60, "the replay node")
    return proc, f"ws://127.0.0.1:{port}", max(int(blocks[0, NUMBER]), start - settings.fee_window - 1)


def start_processes(settings: Settings, files: dict[str, list[Path]], replay_from: int, speed: float | None,
                    log_dir: Path, echo: Callable[[str], None],
                    chain: ChainOptions | None = None) -> tuple[list[Process], dict[str, int]]:
    """The stream worker; the local exchange (unless CHAINCAST_EXCHANGE_URL is set) and its producer;
    the replay node of real mainnet blocks or a Hardhat dev chain (unless CHAINCAST_NODE_URL is set)
    and the block follower."""
    chain = chain or ChainOptions()
    names = ["worker", "producer", "chain", "retrainer"]
    if settings.metrics_port == 0:
        ports = {name: free_port() for name in names}
    else:
        ports = {name: settings.metrics_port + i for i, name in enumerate(names)}
    procs = [child("worker", ["worker"], settings, log_dir, ports["worker"]),
             # champion/challenger on the bars the worker makes; a promotion swaps the worker's model live
             child("retrainer", ["retrain"], settings, log_dir, ports["retrainer"])]
    url = settings.exchange_url
    if url is None:
        port = free_port()
        args = ["exchange", "serve", "--port", str(port), "--speed", "max" if speed is None else str(speed),
                "--start", str(replay_from)]
        args += [a for paths in files.values() for path in paths for a in ("--data", str(path))]
        procs.append(child("exchange", args, settings, log_dir, 0))
        wait_for_port(port, procs[-1].popen, 120, "the local exchange")  # slow on a loaded host
        url = f"ws://127.0.0.1:{port}"
    procs.append(child("producer", ["produce", "exchange", "--url", url, "--streams", "trade",
                                    "--symbols", ",".join(settings.symbols).lower()], settings, log_dir,
                       ports["producer"]))
    node = settings.node_url
    from_block: int | None = None
    if node is None and chain.source == "replay":
        replay_node, node, from_block = start_replay_node(settings, chain, log_dir)
        procs.append(replay_node)
        echo(f"local chain (replay node of real mainnet blocks, {chain.data.name}) on {node}")
    elif node is None:
        try:
            hardhat, _http, node = start_hardhat(log_dir, mining_interval_ms=2000)
        except EmbeddedError as exc:  # the chain is optional in the demo; the market path runs without it
            echo(f"no local chain: {exc}")
            del ports["chain"]
            return procs, ports
        procs.append(hardhat)
        echo(f"local chain (hardhat) on {node}")
    # A user's node URL may embed an API key: it travels in the child's environment, never on
    # its command line (which every local user can read).
    args = ["produce", "chain"] if settings.node_url else ["produce", "chain", "--node", node]
    if from_block is not None:
        args += ["--from-block", str(from_block)]
    procs.append(child("chain", args, settings, log_dir, ports["chain"]))
    return procs, ports


def _refresh(status: Status, client: redis.Redis, settings: Settings, ports: dict[str, int]) -> None:
    worker = scrape(ports["worker"])
    if worker:
        status.trades = worker.get("chaincast_trades_total", status.trades)
        status.bars = worker.get("chaincast_bars_total", status.bars)
        status.predictions = worker.get("chaincast_predictions_total", status.predictions)
    status.fee = client.hgetall(RedisLayout.of(settings).fee_latest(settings.fee_chain_id)) or status.fee
    for sym in settings.symbols:
        latest = client.hgetall(RedisLayout.of(settings).latest(sym))
        if latest:
            status.latest[sym] = latest
            if status.first_forecast_s is None:
                status.first_forecast_s = time.monotonic() - status.started

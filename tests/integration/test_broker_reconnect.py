"""The broker lost mid-run: the worker and a producer reconnect with backoff, and their metrics say so.

An Apache Kafka node of its own (deploy/kafka) is SIGKILLed while a slow replay feeds a worker,
then restarted on the same ports with the same data. In both processes ``chaincast_broker_up``
goes 1 -> 0 -> 1 and ``chaincast_broker_reconnects_total`` moves; the worker then goes on
closing bars from the trades sent across the outage.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable

import pytest

from chaincast.deploy.embedded import Process, embedded_stack, free_port
from chaincast.deploy.metrics import scrape
from chaincast.stream import kafka_options
from chaincast.stream.settings import Settings
from tests.integration.conftest import serve_model

# Market seconds per wall second: a bar per market every 5 s, so few sends wait out the outage
# (aiokafka expires a batch after its 40 s request timeout).
REPLAY_SPEED = "12"


def child(name: str, args: list[str], settings: Settings, log_dir, port: int) -> Process:
    env = {**os.environ, **settings.env(), "CHAINCAST_METRICS_PORT": str(port)}
    return Process(name, [sys.executable, "-m", "chaincast.deploy.cli", *args], env=env,
                   log_path=log_dir / f"{name}.log").start()


def wait_for(what: str, ok: Callable[[], bool], procs: list[Process], log_dir, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        for p in procs:
            assert p.alive(), f"{p.name} exited while waiting for {what}: " + \
                (log_dir / f"{p.name}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.mark.slow
def test_broker_killed_and_restarted_metrics_show_the_loss_and_the_reconnect(request, tmp_path):
    if request.config.getoption("--broker") == "tansu":
        pytest.skip("Apache Kafka not selected (--broker tansu): this test kills and restarts a Kafka node")
    from chaincast.deploy.kafka import kafka_cluster

    with kafka_cluster(tmp_path / "kafka") as kafka, embedded_stack(tmp_path / "redis", broker=False) as env:
        settings = asyncio.run(kafka_options.resolve(Settings(
            **env, KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap, CHAINCAST_HOME=str(tmp_path / "home"),
            CHAINCAST_APP_ID="cc-reconnect")))
        serve_model(settings)

        ports = {"worker": free_port(), "replay": free_port()}
        procs = [child("worker", ["worker"], settings, tmp_path, ports["worker"]),
                 child("replay", ["replay", "--speed", REPLAY_SPEED], settings, tmp_path, ports["replay"])]
        metrics = {name: lambda port=port: scrape(port) for name, port in ports.items()}
        try:
            wait_for("both processes to see the broker and the worker to close bars",
                     lambda: all(m().get("chaincast_broker_up") == 1 for m in metrics.values())
                     and metrics["worker"]().get("chaincast_bars_total", 0) >= 2, procs, tmp_path)
            assert all(m().get("chaincast_broker_reconnects_total", 0) == 0 for m in metrics.values())

            kafka.kill(1)  # SIGKILL: the connections drop, no controlled shutdown
            wait_for("both processes to report the broker down",
                     lambda: all(m().get("chaincast_broker_up") == 0 for m in metrics.values()), procs, tmp_path)
            bars_down = metrics["worker"]()["chaincast_bars_total"]

            kafka.restart(1)  # same ports, same data
            wait_for("both processes to count a reconnect",
                     lambda: all(m().get("chaincast_broker_up") == 1
                                 and m().get("chaincast_broker_reconnects_total", 0) >= 1 for m in metrics.values()),
                     procs, tmp_path)
            wait_for("the worker to close bars again", lambda: metrics["worker"]().get(
                "chaincast_bars_total", 0) >= bars_down + 2, procs, tmp_path)
        finally:
            for p in reversed(procs):
                p.stop(timeout=30)

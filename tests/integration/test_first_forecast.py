"""The compose stack's own commands, run here as processes, reach a first forecast.

bootstrap, exchange, producer and worker-1 run exactly the `command` deploy/compose.yaml gives
them (only the hosts and ports differ: the embedded broker and Redis stand in for the kafka and
redis services, and the exchange listens on a free port); the bootstrap step alone puts a model
in place, and a forecast lands in Redis.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from chaincast.deploy.embedded import Process, free_port, wait_for_port
from chaincast.stream.forecasts import ForecastReader

pytestmark = pytest.mark.one_broker  # the compose commands' order and bootstrap; delivery on Kafka is proven by the pipeline, poison, fault and retrain tests

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def compose_command(service: str, port: int) -> list[str]:
    cmd = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"][service]["command"]
    out = [a.replace("/app/deploy/", f"{DEPLOY}/") for a in cmd]
    if "--port" in out:
        out[out.index("--port") + 1] = str(port)
    if "--host" in out:
        out[out.index("--host") + 1] = "127.0.0.1"
    return out


def cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "chaincast.deploy.cli", *args]


@pytest.mark.timeout(1800)  # bootstrap trains on the bundled week: minutes on a loaded host
def test_compose_commands_reach_a_first_forecast(settings_for, tmp_path: Path) -> None:  # noqa: ANN001
    settings = settings_for()
    env = {**os.environ, **settings.env(), "CHAINCAST_METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"}
    boot = subprocess.run(cli(compose_command("bootstrap", 0)), env=env, capture_output=True, text=True,
                          timeout=1500)
    assert boot.returncode == 0, boot.stdout + boot.stderr
    assert "serves" in boot.stdout and "announced" in boot.stdout

    port = free_port()
    env["CHAINCAST_EXCHANGE_URL"] = f"ws://127.0.0.1:{port}"
    procs = []
    try:
        procs.append(Process("exchange", cli(compose_command("exchange", port)), env=env,
                             log_path=tmp_path / "exchange.log").start())
        wait_for_port(port, procs[-1].popen, 300, "the exchange")
        for service in ("producer", "worker-1"):
            procs.append(Process(service, cli(compose_command(service, 0)), env=env,
                                 log_path=tmp_path / f"{service}.log").start())

        async def first_forecast() -> list:
            reader = ForecastReader(settings)
            try:
                deadline = time.monotonic() + 900
                while time.monotonic() < deadline:
                    for p in procs:
                        assert p.alive(), (tmp_path / f"{p.name}.log").read_text()[-2000:]
                    if latest := await reader.latest():
                        return latest
                    await asyncio.sleep(2)
                return []
            finally:
                await reader.close()

        latest = asyncio.run(first_forecast())
    finally:
        for p in reversed(procs):
            p.stop(timeout=15)
    assert latest, (tmp_path / "worker-1.log").read_text()[-3000:]
    assert {p.symbol for p in latest} <= set(settings.symbols)

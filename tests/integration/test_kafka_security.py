"""Every client over SASL_SSL (SCRAM) to a real Apache Kafka broker whose certificate the test makes.

A worker, the replay producer, the model announcement and the topic admin all
authenticate; forecasts arrive; the password shows up in no log, repr, process
argument or metric. A wrong password or a missing CA file ends a command with
exit code 2 and one line, instead of hanging.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.request import urlopen

import pytest

from chaincast.deploy.embedded import Process, embedded_stack, free_port
from chaincast.producers.replay import Market, replay
from chaincast.stream import kafka_options
from chaincast.stream.predict import history_size
from chaincast.stream.settings import Settings
from tests.integration.conftest import day_of, read_topic, serve_model
from tests.integration.kafka_security import make_certs

USER = "chaincast"
BARS = 150


@pytest.fixture(scope="module")
def secure(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A SASL_SSL Apache Kafka node and a Redis server; the env a client needs (with the password)."""
    if request.config.getoption("--broker") == "tansu":
        pytest.skip("Apache Kafka not selected (--broker tansu); the embedded broker has no SASL or TLS")
    from chaincast.deploy.kafka import SaslSsl, kafka_cluster

    root = tmp_path_factory.mktemp("secure")
    certs = make_certs(root / "certs")
    password = "pw-" + secrets.token_hex(12)
    with kafka_cluster(root / "kafka", security=SaslSsl(USER, password, certs.server_pem)) as cluster, \
            embedded_stack(root / "redis", broker=False) as env:
        yield {**env, "KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap,
               "CHAINCAST_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CHAINCAST_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
               "CHAINCAST_KAFKA_SASL_USERNAME": USER, "CHAINCAST_KAFKA_SASL_PASSWORD": password,
               "CHAINCAST_KAFKA_SSL_CAFILE": str(certs.ca)}


def cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chaincast.deploy.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def test_sasl_ssl_run_writes_forecasts_and_the_password_never_shows(secure, tmp_path):
    password = secure["CHAINCAST_KAFKA_SASL_PASSWORD"]
    env = {**secure, "CHAINCAST_HOME": str(tmp_path / "home"), "CHAINCAST_APP_ID": "cc-secure",
           "CHAINCAST_LOG_LEVEL": "DEBUG"}  # the chattiest logs, client protocol traces included
    settings = asyncio.run(kafka_options.resolve(Settings(**env)))
    assert password not in repr(settings) and password not in str(settings)
    serve_model(settings)

    port = free_port()
    worker = Process("worker", [sys.executable, "-m", "chaincast.deploy.cli", "worker"],
                     env={**os.environ, **settings.env(), "CHAINCAST_METRICS_PORT": str(port)},
                     log_path=tmp_path / "worker.log").start()
    try:
        asyncio.run(replay(settings, [Market("BTCUSDT", day_of("BTCUSDT")[:BARS])]))
        want = BARS - 1 - history_size(settings.window) + 1
        preds = asyncio.run(read_topic(settings, settings.topic_predictions, lambda m: len(m) >= want, timeout=180))
        cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes().decode(errors="replace")
        metrics = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        assert worker.stop(30) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert len(preds) >= want
    worker_log = (tmp_path / "worker.log").read_text()
    assert "SASL" in worker_log or "Sasl" in worker_log  # the log is the chatty one, so the check means something
    for where, text in [("process arguments", cmdline), ("metrics", metrics), ("worker log", worker_log)]:
        assert password not in text, f"the password appears in the {where}"


def test_wrong_password_is_one_line_and_exit_2(secure, tmp_path):
    wrong = "not-" + secrets.token_hex(8)
    done = cli({**secure, "CHAINCAST_KAFKA_SASL_PASSWORD": wrong, "CHAINCAST_HOME": str(tmp_path)},
               "tail", "--limit", "1")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and "cannot use Kafka" in lines[0], done.stderr[-2000:]
    assert wrong not in done.stderr + done.stdout


def test_missing_ca_file_is_exit_2(secure, tmp_path):
    done = cli({**secure, "CHAINCAST_KAFKA_SSL_CAFILE": str(tmp_path / "nope.pem"), "CHAINCAST_HOME": str(tmp_path)},
               "tail", "--limit", "1")
    flat = " ".join(re.sub("[│╭╮╰╯─]", " ", done.stderr).split())  # the CLI's error box wraps lines
    assert done.returncode == 2 and "no such file" in flat and "Traceback" not in done.stderr


def test_plaintext_client_against_the_tls_listener_is_exit_2(secure, tmp_path):
    env = {k: v for k, v in secure.items() if not k.startswith("CHAINCAST_KAFKA_")}
    done = cli({**env, "CHAINCAST_HOME": str(tmp_path)}, "tail", "--limit", "1")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]

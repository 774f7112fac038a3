"""The two commands as a user runs them: the local exchange and the producer, each its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.producers.exchange_helpers import BTC_DAY, exchange_settings  # noqa: F401 (a fixture)

from chaincast.producers.checkpoint import Checkpoint
from chaincast.producers.synth import first_trade_id

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "chaincast.deploy.exchange_cli", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})}, **kwargs)


def test_serve_then_produce(exchange_settings) -> None:
    settings = exchange_settings()
    server = cli("serve", "--data", str(BTC_DAY), "--port", "0", "--speed", "max")
    try:
        url = server.stdout.readline().strip()
        assert url.startswith("ws://127.0.0.1:")
        producer = cli("produce", "--url", url, "--symbols", "btcusdt", "--duration", "6", env=settings.env())
        out, err = producer.communicate(timeout=90)
    finally:
        server.terminate()
        server.wait(10)
    assert producer.returncode == 0, err
    published = int(out.split()[0])
    assert published > 0 and "0 duplicates dropped" in out and "0 dead-lettered" in out
    # The checkpoint names the last trade Kafka acknowledged: the first `published` ids of the day.
    day_start = first_trade_id(1_662_336_000_000)
    assert Checkpoint.for_endpoint(settings.home, "binance", url).load()["BTCUSDT"].trade_id == day_start + published - 1


@pytest.mark.parametrize(("args", "message"), [
    (["produce", "--url", "http://example"], "not a ws:// or wss:// URL"),
    (["produce", "--url", "ws://127.0.0.1:1", "--streams", "trade,aggTrade"], "not both"),
    (["serve", "--data", "no-such-file.csv"], "no such file"),
    (["serve", "--data", str(BTC_DAY), "--speed", "fast"], "not a number or 'max'"),
])
def test_bad_arguments_are_one_line_errors(args: list[str], message: str, exchange_settings) -> None:
    proc = cli(*args, env=exchange_settings().env())
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and message in err and "Traceback" not in err

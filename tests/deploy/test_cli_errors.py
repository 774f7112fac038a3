"""A bad setting or argument is ONE line on stderr and exit code 2, from every entry point."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

BAD_ENV = {"CHAINCAST_PARTITIONS": "zero"}


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CHAINCAST_METRICS_PORT": "0", **(env or {})})


@pytest.mark.parametrize("args", [
    ["chaincast.deploy.cli", "worker"],
    ["chaincast.deploy.cli", "produce", "chain", "--node", "ws://127.0.0.1:1"],
    ["chaincast.deploy.cli", "produce", "exchange", "--url", "ws://127.0.0.1:1"],
    ["chaincast.deploy.cli", "models", "list"],
    ["chaincast.deploy.cli", "predictions"],
    ["chaincast.deploy.exchange_cli", "serve", "--data", "x.csv"],
    ["chaincast.deploy.chain_cli", "chain", "--node", "ws://127.0.0.1:1"],
    ["chaincast.deploy.models_registry_cli"],
], ids=lambda a: " ".join(a[1:]) or a[0])
def test_a_bad_setting_is_one_line_and_exit_2(args: list[str]) -> None:
    proc = run(args, BAD_ENV)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "CHAINCAST_PARTITIONS" in proc.stderr, proc.stderr


def test_a_bad_argument_is_one_line_and_exit_2() -> None:
    proc = run(["chaincast.deploy.cli", "up", "--speed", "fast"])
    assert (proc.returncode, proc.stderr.count("\n")) == (2, 1), proc.stderr
    assert "--speed" in proc.stderr


def test_help_and_bare_command_still_show_the_help() -> None:
    assert run(["chaincast.deploy.cli", "--help"]).returncode == 0
    bare = run(["chaincast.deploy.cli"])
    assert "Usage" in bare.stdout + bare.stderr and "worker" in bare.stdout + bare.stderr

"""The model registry under faults, with a real retrainer process, broker and Redis.

- The retrainer is SIGKILLed in the middle of a promotion: its model file is in
  place, its card written but not yet linked, the champion pointer not moved.
  Nothing stubs the write: an audit hook in the retrainer process kills its own
  process group (the retrainer and its training process) when the registry is
  about to link the card, the exact point under test.
- The registry's disk is full (a small tmpfs, filled to the last byte): the
  retrainer logs, backs off and retries while the old champion serves; once
  there is room again the challenger lands.

The registry is a directory: the broker is not what these prove.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaincast.deploy.embedded import Process, free_port
from chaincast.deploy.metrics import scrape_samples
from chaincast.stream.records import ModelUpdate
from chaincast.stream.settings import Settings
from tests.conftest import fill
from tests.integration.conftest import read_topic
from tests.integration.test_retrain import PHASE1, champion_of, cli, run, send_bars, series, wait_for

pytestmark = pytest.mark.one_broker

# Run the real CLI with an audit hook: os.link(tmp, "<version>.json") is the card going into place, after
# the model file and before the champion pointer. SIGKILL to the whole process group, as a lost node.
KILL_BEFORE_THE_CARD = """
import os, re, runpy, signal, sys
card = re.compile(r"^[0-9a-f]{12}[.]json$")
def hook(event, args):
    if event == "os.link" and card.match(os.path.basename(os.fsdecode(args[1]))):
        os.killpg(0, signal.SIGKILL)
sys.addaudithook(hook)
sys.argv = ["chaincast", *sys.argv[1:]]
runpy.run_module("chaincast.deploy.cli", run_name="__main__", alter_sys=True)
"""


def retrain_settings(settings_for, **env: str) -> Settings:
    return settings_for(CHAINCAST_RETRAIN_EVERY_BARS=str(2 * PHASE1), CHAINCAST_RETRAIN_MAX_EPOCHS="20",
                        CHAINCAST_RETRAIN_PROMOTE_MARGIN="0.01", **env)


def announced(settings: Settings, until, timeout: float = 120.0) -> list[str]:
    """The versions on models.updates, oldest first."""
    msgs = asyncio.run(read_topic(settings, settings.topic_models,
                                  lambda m: until([ModelUpdate.loads(x.value).version for x in m]), timeout))
    return [ModelUpdate.loads(m.value).version for m in msgs]


def cli_fails(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chaincast.deploy.cli", *args], env={**os.environ, **settings.env()},
                          capture_output=True, text=True, timeout=120)


def cardless(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*.onnx") if not p.with_suffix(".json").exists())


def refusals(port: int, reason: str) -> float:
    return sum(v for name, labels, v in scrape_samples(port)
               if name == "chaincast_retrain_refusals_total" and labels.get("reason") == reason)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_retrainer_killed_between_model_and_card_registry_stays_consistent(settings_for, tmp_path):
    settings = retrain_settings(settings_for)
    bars = series()
    registry, first = champion_of(settings, bars)
    root = settings.registry_dir
    before = {e.version for e in registry.list()}
    asyncio.run(send_bars(settings, bars, 0, PHASE1))
    env = {**os.environ, **settings.env(), "CHAINCAST_METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"}
    doomed = Process("retrainer", [sys.executable, "-c", KILL_BEFORE_THE_CARD, "retrain"], env=env,
                     log_path=tmp_path / "retrainer.log").start()
    try:
        wait_for("the kill at the card", lambda: not doomed.alive(), timeout=600)
    finally:
        doomed.kill()
    assert doomed.popen.returncode == -9, (tmp_path / "retrainer.log").read_text()[-3000:]

    # Half a promotion on disk: a model without its card, the card's temp file.
    (orphan,) = cardless(root)
    temps = sorted(root.glob(".*.tmp"))
    assert [p.name.startswith(f".{orphan.stem}.json.") for p in temps] == [True]
    # ... and none of it visible: not listed, not the champion, not promotable, never announced.
    assert {e.version for e in registry.list()} == before
    assert registry.champion(settings.model_name).version == first.version
    listing = cli(settings, "models", "list")
    assert f"* {first.version}" in listing and orphan.stem not in listing
    refused = cli_fails(settings, "models", "promote", orphan.stem)
    assert refused.returncode == 2 and f"no model {orphan.stem}" in refused.stderr
    assert set(announced(settings, lambda v: len(v) >= 2)) == {first.version}  # the test's and the restart's

    # A later start sweeps what the dead writer left (once older than any write in progress could be)
    # and the uncommitted round is trained again and lands whole.
    past = time.time() - 2 * 3600
    for path in (orphan, *temps):
        os.utime(path, (past, past))
    again = run("retrainer2", ["retrain"], settings, tmp_path)
    try:
        wait_for("the new champion", lambda: registry.champion(settings.model_name).version != first.version, 600)
        versions = announced(settings, lambda v: bool(v) and v[-1] not in before)
    finally:
        assert again.stop(60) == 0, (tmp_path / "retrainer2.log").read_text()[-3000:]
    champion = registry.champion(settings.model_name)
    assert versions[-1] == champion.version and champion.card["family"] == "linear"
    assert "left by a registry write that never finished" in (tmp_path / "retrainer2.log").read_text()
    assert not list(root.glob(".*.tmp")) and cardless(root) == []
    for entry in registry.list():  # every model complete: its bytes match its card
        assert entry.onnx_path.exists() and entry.card["sha256"] == entry.sha256


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_registry_disk_full_retrainer_backs_off_old_champion_serves(settings_for, tmp_path, small_fs):
    settings = retrain_settings(settings_for, CHAINCAST_REGISTRY_RETRY_S="1")
    root = small_fs(settings.registry_dir, 4 * 1024 * 1024)
    bars = series()
    registry, first = champion_of(settings, bars)
    before = sorted(p.name for p in root.iterdir())
    filler = fill(root)  # the disk is full from here on
    asyncio.run(send_bars(settings, bars, 0, PHASE1))
    port = free_port()
    retrainer = run("retrainer", ["retrain"], settings, tmp_path, port)
    log = tmp_path / "retrainer.log"
    try:
        # Two failed writes: the first, and a retry after the backoff, with the process still running.
        wait_for("two failed registry writes", lambda: refusals(port, "registry_write_failed") >= 2, 600)
        assert retrainer.alive(), log.read_text()[-3000:]
        assert "cannot write the registry" in log.read_text() and "No space left on device" in log.read_text()
        # Nothing half-written. (Polled: a retry's temp file lives for the milliseconds of a failing write.)
        wait_for("no partial file", lambda: sorted(p.name for p in root.iterdir()) == sorted([*before, "filler"]), 30)
        assert registry.champion(settings.model_name).version == first.version
        assert set(announced(settings, lambda v: len(v) >= 2)) == {first.version}

        filler.unlink()  # room again: the next retry lands the same challenger
        wait_for("the challenger to land", lambda: registry.champion(settings.model_name).version != first.version,
                 300)
        versions = announced(settings, lambda v: bool(v) and v[-1] != first.version)
    finally:
        assert retrainer.stop(60) == 0, log.read_text()[-3000:]
    champion = registry.champion(settings.model_name)
    assert versions[-1] == champion.version and champion.card["parent"] == first.version
    assert not list(root.glob(".*.tmp")) and cardless(root) == []
    assert [e.version for e in registry.list()][-1] == champion.version

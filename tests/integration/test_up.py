"""`chaincast up` in one shell, `chaincast predictions` and the API from another with no variables set.

The second "shell" is a process whose environment holds no Kafka, Redis or CHAINCAST_* variable, only
the same per-user data directory (XDG_DATA_HOME, where CHAINCAST_HOME defaults to): it finds the stack
through the env file `up` wrote there.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def clean_env(data_home: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("CHAINCAST_", "KAFKA_", "REDIS_"))}
    return {**keep, "XDG_DATA_HOME": str(data_home), "PYTHONUNBUFFERED": "1"}


@pytest.mark.timeout(1200)  # `up` trains its first model: minutes on a loaded host
def test_second_shell_just_works(tmp_path: Path) -> None:
    data_home = tmp_path / "data"
    env = clean_env(data_home)
    home = data_home / "chaincast"
    log = open(tmp_path / "up.log", "w")
    up = subprocess.Popen([sys.executable, "-m", "chaincast.deploy.cli", "up", "--duration", "900"],
                          env={**env, "CHAINCAST_METRICS_PORT": "0"}, stdout=log, stderr=subprocess.STDOUT)
    try:
        shown = ""
        deadline = time.monotonic() + 1000
        while time.monotonic() < deadline:
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            if (home / "env").is_file():
                shown = subprocess.run([sys.executable, "-m", "chaincast.deploy.cli", "predictions"], env=env,
                                       capture_output=True, text=True, timeout=120).stdout
                if re.search(r"BTCUSDT log_return:h1 bar \d+: [\d.]+ -> [\d.]+", shown):
                    break
            time.sleep(2)
        assert "BTCUSDT log_return:h1" in shown, (tmp_path / "up.log").read_text()[-3000:]

        out = (tmp_path / "up.log").read_text()
        token = re.search(r"first API token .*: (cc_\S+)", out).group(1)
        url = re.search(r"export CHAINCAST_API_URL=(\S+)", out).group(1)
        assert httpx.get(url + "/v1/forecasts", timeout=30).status_code == 401
        resp = httpx.get(url + "/v1/forecasts", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert resp.status_code == 200 and {f["symbol"] for f in resp.json()["forecasts"]} == {"BTCUSDT", "ETHUSDT"}
        # `up` serves volatility beside the return (CHAINCAST_FORECASTS unset): its own forecaster, no price
        vol: list[dict] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and {f["symbol"] for f in vol} != {"BTCUSDT", "ETHUSDT"}:
            time.sleep(2)
            got = httpx.get(url + "/v1/forecasts", params={"forecaster": "volatility:h5"},
                            headers={"Authorization": f"Bearer {token}"}, timeout=30)
            vol = got.json().get("forecasts", []) if got.status_code == 200 else []
        assert {f["symbol"] for f in vol} == {"BTCUSDT", "ETHUSDT"}, (got.status_code, got.text[:500])
        assert all(f["target"] == "volatility" and f["horizon"] == 5 and f.get("price_hat") is None
                   and 0 <= f["q10"] <= f["q50"] <= f["q90"] for f in vol), vol
        assert token not in (home / "tokens.json").read_text()  # only its hash is stored
        assert (home / "env").stat().st_mode & 0o077 == 0
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(180)
        log.close()
    assert not (home / "env").exists()  # withdrawn at shutdown: no stale stack for the next shell

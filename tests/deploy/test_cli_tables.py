"""The CLI's tables (rich): one row per model, the champion marked, whole rows when piped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from chaincast.consumers.registry import Registry


def test_models_list_is_a_table_with_the_champion_marked(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    card = {"family": "linear", "name": "forecaster", "created_at": 1_700_000_000_000,
            "metrics": {"val": {"skill_vs_persistence": 0.0123}, "holdout": {"skill_vs_persistence": -0.5, "mae": 0.002}}}
    first = registry.put(b"model one", card)
    second = registry.put(b"model two", {**card, "family": "gru", "parent": first.version})
    registry.set_champion("forecaster", second.version)
    proc = subprocess.run([sys.executable, "-m", "chaincast.deploy.cli", "models", "list"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "CHAINCAST_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["version", "family", "created"]
    assert len(lines) == 3  # header + one row per model, none wrapped
    assert lines[2].startswith(f"* {second.version}") and f" {first.version}" in lines[2]  # champion, its parent
    assert lines[1].split()[:2] == [first.version, "linear"] and "+0.0123" in lines[1] and "-0.5000" in lines[1]

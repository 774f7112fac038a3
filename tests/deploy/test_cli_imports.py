"""The CLI and the serving path import no training framework (torch is for train, export, retrain)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def imported_modules(statement: str) -> set[str]:
    """Every module ``python -X importtime -c statement`` imports (read from its report on stderr)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", statement], capture_output=True, text=True,
                          timeout=300, check=True)
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("module", ["chaincast.deploy.cli", "chaincast.stream.app", "chaincast.models.serving"])
def test_no_torch_on_import(module: str) -> None:
    modules = imported_modules(f"import {module}")
    assert module in modules  # the report was read
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}


def test_the_check_sees_torch_when_it_is_there() -> None:
    assert "torch" in imported_modules("import chaincast.models.export")

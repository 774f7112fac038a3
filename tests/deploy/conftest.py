"""Tests of deploy/: binaries they need are required, never skipped (CI installs them with apt)."""

from __future__ import annotations

import shutil

import pytest

APT = {"prometheus": "prometheus", "promtool": "prometheus", "chromium": "chromium",
       "docker-compose": "docker-compose"}


def require(binary: str) -> str:
    """The binary's path, or a failing test that says which apt package provides it."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"`{binary}` is not on PATH: apt-get install -y {APT.get(binary, binary)}", pytrace=False)
    return path

"""Run every docstring example in the package as a test.

The doctests are found through the installed ``chaincast`` package (not by path), so each module is
imported once, under its one name.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

LAYERS = ["stream", "producers", "consumers", "models", "deploy"]


def modules_with_examples() -> list[str]:
    names = []
    for layer in LAYERS:
        package = importlib.import_module(f"chaincast.{layer}")
        names += walk(package.__path__, f"chaincast.{layer}.")
    return sorted(names)


def walk(path: list[str], prefix: str) -> list[str]:
    names = []
    for info in pkgutil.walk_packages(path, prefix):
        spec = importlib.util.find_spec(info.name)
        if spec and spec.origin and spec.origin.endswith(".py") and ">>>" in open(spec.origin).read():
            names.append(info.name)
    return names


MODULES = modules_with_examples()


def test_examples_found() -> None:
    assert len(MODULES) >= 20, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0

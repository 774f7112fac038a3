"""Run the doctests of models/ and the registry under a plain ``pytest`` (testpaths is only tests/)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["models.features", "models.rolling", "models.targets", "models.evaluate", "models.backtest"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0

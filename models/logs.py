"""The one logging setup of every chaincast process (CLI commands, child processes, pool workers)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | int = logging.WARNING, fmt: str = FORMAT) -> None:
    """One stderr handler on the root logger (added once per process); each call sets the level.

    A command's own ``--log-level`` is applied after its group's settings were loaded,
    so the latest call must win the level (``basicConfig`` alone would ignore it).
    """
    level = level.upper() if isinstance(level, str) else level
    logging.basicConfig(level=level, format=fmt)
    logging.getLogger().setLevel(level)

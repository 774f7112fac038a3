"""Atomic file writes: a reader sees the old content or the new, never half of one.

The data goes to a temporary sibling (same directory, so the rename stays on one
file system), is fsynced, then renamed over the target (or hard-linked, for
write-once files); the directory is fsynced so the rename itself survives a crash.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str, *, exclusive: bool = False, mode: int = 0o644) -> bool:
    """Write ``data`` to ``path`` atomically; returns False only when ``exclusive`` and ``path`` exists.

    ``exclusive``: create only (a content-addressed file is never overwritten; the existing
    one is left untouched). ``mode``: mkstemp's 0600 would hide files from readers running
    as another user (models, read by workers).
    """
    body = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            try:
                os.link(tmp, path)  # unlike os.replace, fails if the target exists
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
            tmp = None
        _fsync_dir(path.parent)
        return True
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)

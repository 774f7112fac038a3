"""The model registry: content-addressed ONNX files with their cards, on a local path.

Layout under ``root``::

    <version>.onnx          the model; version = first 12 hex of its sha256
    <version>.json          its card (sha256, version, created_at, metrics ...)
    champions/<name>.json   {"version": ...}: what the predict agents serve

Files are written to a temp file in the same directory and linked into place,
so a reader never sees half a file and an existing version is never
overwritten. The order is fixed: the model, then its card (a card's presence
means the model is complete), then, on promotion, the champion pointer. A
writer that fails between two steps (a full disk) takes back the model it
created; one killed between them (SIGKILL, a lost node) leaves at most a
temp file or a model without a card, which nothing lists or serves and
``sweep`` removes once it is older than any write in progress could be.
A retrainer whose write failed retries on a ``WriteBackoff`` while the old
champion serves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaincast.models.timeunits import now_ms
from chaincast.stream.files import write_atomic
from chaincast.stream.metrics import REFUSALS

_VERSION = re.compile(r"^[0-9a-f]{12}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
# A put takes milliseconds between its steps; an hour-old temp file or card-less model is a dead writer's.
ORPHAN_GRACE_S = 3600.0
log = logging.getLogger(__name__)
# The longest wait between two tries of a failing registry write, in units of CHAINCAST_REGISTRY_RETRY_S.
MAX_BACKOFF_FACTOR = 16


@dataclass(frozen=True)
class ModelEntry:
    version: str
    sha256: str
    onnx_path: Path
    card_path: Path
    card: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.card.get("name", self.card.get("family", "")))


def _write_once(path: Path, data: bytes) -> bool:
    """Atomically create ``path`` with ``data``; False if it already existed (left untouched)."""
    return write_atomic(path, data, exclusive=True)


def _replace(path: Path, data: bytes) -> None:
    """Atomically create or replace ``path`` (for the mutable champion pointer)."""
    write_atomic(path, data)


class WriteBackoff:
    """When a retrainer tries a registry write again after one failed (a full disk, a quota, a read-only mount).

    Each failure in a row doubles the wait, from ``base_s`` up to ``MAX_BACKOFF_FACTOR`` times it,
    less up to 20 % (jitter: retrainers sharing a disk do not retry in step); a write that lands
    resets it. ``due()`` says whether the next try may start.
    """

    def __init__(self, base_s: float, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.rng = rng or random.Random()
        self.failures = 0
        self.retry_at = 0.0  # time.monotonic()

    def failed(self) -> float:
        """Count one more failed write; the seconds until the next try (``retry_at``)."""
        self.failures += 1
        factor = min(2 ** (self.failures - 1), MAX_BACKOFF_FACTOR)
        delay = self.base_s * factor * self.rng.uniform(0.8, 1.0)
        self.retry_at = time.monotonic() + delay
        return delay

    def refused(self, registry: "Registry", exc: OSError, serving: str) -> float:
        """A write ``registry`` refused: counted (``registry_write_failed``), logged with what
        keeps serving (``serving``), and one more failure (``failed``); the seconds until the next try."""
        delay = self.failed()
        REFUSALS.labels("registry_write_failed").inc()
        log.error("cannot write the registry %s (%s: %s); %s keeps serving; retrying in %.0fs",
                  registry.root, type(exc).__name__, exc, serving, delay)
        return delay

    def landed(self) -> None:
        """A write went through (or a round had none to make): the next failure waits ``base_s`` again."""
        self.failures, self.retry_at = 0, 0.0

    def due(self) -> bool:
        return time.monotonic() >= self.retry_at


class Registry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, onnx_bytes: bytes, card: dict[str, Any]) -> ModelEntry:
        """Store a model and its card; putting the same bytes again returns the existing entry."""
        sha = hashlib.sha256(onnx_bytes).hexdigest()
        version = sha[:12]
        onnx_path, card_path = self.root / f"{version}.onnx", self.root / f"{version}.json"
        if card_path.exists():
            return self.get(version)
        created = _write_once(onnx_path, onnx_bytes)
        if not created and hashlib.sha256(onnx_path.read_bytes()).hexdigest() != sha:
            raise ValueError(f"{onnx_path} exists with other content (a 12-hex prefix collision?)")
        full = {**card, "sha256": sha, "version": version, "created_at": card.get("created_at") or now_ms()}
        try:
            _write_once(card_path, json.dumps(full, indent=2, sort_keys=True, allow_nan=False).encode())
        except OSError:  # a full disk, a quota: take the model back rather than leave it without a card
            if created:
                onnx_path.unlink(missing_ok=True)
            raise
        return self.get(version)

    def get(self, version: str) -> ModelEntry:
        if not _VERSION.match(version):
            raise KeyError(f"not a model version: {version!r}")
        card_path = self.root / f"{version}.json"
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KeyError(f"no model {version} in {self.root}") from None
        return ModelEntry(version, str(card["sha256"]), self.root / f"{version}.onnx", card_path, card)

    def sweep(self, grace_s: float = ORPHAN_GRACE_S) -> list[Path]:
        """Remove what killed writers left (temp files, models without a card) older than ``grace_s``.

        Younger ones may belong to a put in progress (another retrainer shares the directory).
        """
        now = time.time()
        candidates = [*self.root.glob(".*.tmp"), *(self.root / "champions").glob(".*.tmp"),
                      *(p for p in self.root.glob("*.onnx")
                        if _VERSION.match(p.stem) and not (self.root / f"{p.stem}.json").exists())]
        removed = []
        for path in candidates:
            try:
                if now - path.stat().st_mtime > grace_s:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:  # its writer finished (or another sweep won) meanwhile
                continue
        return removed

    def list(self) -> list[ModelEntry]:
        """Every complete model, oldest first."""
        entries = [self.get(p.stem) for p in self.root.glob("*.json") if _VERSION.match(p.stem)]
        return sorted(entries, key=lambda e: (e.card.get("created_at", 0), e.version))

    def _champion_path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"bad model name {name!r}")
        return self.root / "champions" / f"{name}.json"

    def champion(self, name: str) -> ModelEntry | None:
        """The version served under ``name``, or None before any promotion."""
        try:
            pointer = json.loads(self._champion_path(name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return self.get(pointer["version"])

    def set_champion(self, name: str, version: str) -> ModelEntry:
        """Point ``name`` at ``version`` (promotion or rollback), atomically."""
        entry = self.get(version)  # refuse to point at a model that is not here
        path = self._champion_path(name)
        path.parent.mkdir(exist_ok=True)
        pointer = {"version": version, "sha256": entry.sha256, "set_at": now_ms()}
        _replace(path, json.dumps(pointer).encode())
        return entry

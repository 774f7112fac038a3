"""The durable cursor of a producer: the last trade id Kafka acknowledged, per symbol.

A small JSON file under ``settings.home``, replaced atomically (write a temp file
in the same directory, fsync, rename) so a crash leaves the old or the new
cursor, never half of one. It is written only after the broker acked the trades
it names, so a restart resumes at or before what Kafka holds; the duplicates
that may cause are dropped by id (see ``TradeCursor``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from chaincast.stream.files import write_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Position:
    trade_id: int
    ts_event: int  # ms; where a REST backfill by time starts


class Checkpoint:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_venue(cls, home: Path, venue: str) -> "Checkpoint":
        return cls(home / "checkpoints" / f"exchange-{venue}.json")

    def load(self) -> dict[str, Position]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            # An unreadable cursor means "start fresh", not "stop producing"; say so loudly.
            log.error("ignoring unreadable checkpoint %s: %s", self.path, exc)
            return {}
        return {sym: Position(int(p["trade_id"]), int(p["ts_event"])) for sym, p in data.items()}

    def save(self, positions: dict[str, Position]) -> None:
        body = json.dumps({s: {"trade_id": p.trade_id, "ts_event": p.ts_event} for s, p in sorted(positions.items())})
        write_atomic(self.path, body)

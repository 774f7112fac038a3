"""The durable cursor of a producer: the last trade id Kafka acknowledged, per symbol.

A small JSON file under ``settings.home``, one per venue and server (host and
port: a different server's ids never look like duplicates), replaced atomically (write a temp file
in the same directory, fsync, rename) so a crash leaves the old or the new
cursor, never half of one. It is written only after the broker acked the trades
it names, so a restart resumes at or before what Kafka holds; the duplicates
that may cause are dropped by id (see ``TradeCursor``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from chaincast.stream.files import write_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Position:
    trade_id: int
    ts_event: int  # ms; where a REST backfill by time starts


def endpoint_name(url: str) -> str:
    """host_port of ``url`` as a file-name part (credentials and path left out: they may be secrets).

    >>> endpoint_name("ws://127.0.0.1:40123"), endpoint_name("wss://ws-feed.exchange.coinbase.com")
    ('127.0.0.1_40123', 'ws-feed.exchange.coinbase.com')
    """
    parsed = urlsplit(url)
    host = parsed.hostname or "local"
    name = f"{host}_{parsed.port}" if parsed.port else host
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


class Checkpoint:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_endpoint(cls, home: Path, venue: str, url: str) -> "Checkpoint":
        """The checkpoint of one venue at one server: another server never inherits its trade ids.

        >>> Checkpoint.for_endpoint(Path("h"), "binance", "wss://user:pw@stream.binance.com:9443/ws").path.name
        'exchange-binance-stream.binance.com_9443.json'
        """
        return cls(home / "checkpoints" / f"exchange-{venue}-{endpoint_name(url)}.json")

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

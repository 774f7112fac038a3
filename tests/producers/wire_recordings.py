"""Read the recorded websocket sessions under tests/fixtures/wire and run them through a normaliser.

Run as a script to rewrite the golden files after a deliberate normaliser change:
``python tests/producers/wire_recordings.py``.
"""

from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

WIRE = Path(__file__).resolve().parents[1] / "fixtures" / "wire"
GOLDEN = WIRE / "golden"
RECORDINGS = {  # golden name -> (recording, venue)
    "binance_spot": ("cryptofeed/BINANCE.ws.1.0.gz", "binance"),
    "binance_us": ("cryptofeed/BINANCE_US.ws.1.0.gz", "binance"),
    "binance_futures": ("cryptofeed/BINANCE_FUTURES.ws.1.0.gz", "binance"),
    "coinbase": ("cryptofeed/COINBASE.ws.28.0.matches.gz", "coinbase"),
}


def messages(recording: str) -> Iterator[tuple[int, str]]:
    """(receive time in ms, raw payload) for every message the server sent."""
    with gzip.open(WIRE / recording, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("wss://") or not line.strip():
                continue  # the connect line and what the client sent
            stamp, payload = line.rstrip("\n").split(": ", 1)
            yield int(float(stamp) * 1000), payload


def normalised(recording: str, venue: str) -> Iterator[dict[str, Any]]:
    """One JSON-able line per message: the record the normaliser made, or why it refused."""
    from chaincast.producers import binance, coinbase
    from chaincast.producers.venue import BadMessage, Control, Kline

    normalise: Callable[[Any, int], Any] = binance.normalise if venue == "binance" else coinbase.normalise
    for ts, raw in messages(recording):
        try:
            event = normalise(binance.decode(raw, 1_000_000), ts)
        except BadMessage as exc:
            yield {"refused": exc.reason}
            continue
        if isinstance(event, Kline):
            yield {"kline": event.bar.model_dump(by_alias=True), "closed": event.closed}
        elif isinstance(event, Control):
            yield {"control": event.kind}
        else:
            yield {"trade": event.model_dump(by_alias=True)}


def golden(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (GOLDEN / f"{name}.jsonl").read_text().splitlines()]


def write_golden() -> None:
    GOLDEN.mkdir(exist_ok=True)
    for name, (recording, venue) in RECORDINGS.items():
        lines = [json.dumps(out, sort_keys=True) for out in normalised(recording, venue)]
        (GOLDEN / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        sys.stderr.write(f"{name}: {len(lines)} messages\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    write_golden()

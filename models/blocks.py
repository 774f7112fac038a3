"""Read block series (base fee, gas, tx count) into one array layout, refusing bad rows with a count.

Formats, detected from the content:

- headered CSV (``.gz`` too) with at least ``number,timestamp,base_fee_per_gas,gas_used,gas_limit``
  and optionally ``tx_count_relay`` (or ``transaction_count`` / ``transactions`` / ``tx_count``)
  and ``mev_value_wei`` (the shared mainnet series);
- a JSON list of block objects with the same names (``transaction_count`` for the tx count),
  as in ``tests/fixtures/data/chain/blocks_*.json``;
- ``stream.records.Block``-shaped mappings (``base_fee``, ``tx_count``), through ``from_records``.

The result is a float64 array (N, len(BLOCK_COLUMNS)) in block order. Missed slots stay
real gaps in time (24 s, 36 s between consecutive numbers); a gap in the *numbers*
(a hole in the file) is kept too, and the feature code never spans it. Rows that
cannot be used are refused and counted by reason: a missing or unparsable field,
a zero gas limit, no base fee (pre-London), a number at or below the previous one.
Missing columns are an error for the whole file.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BLOCK_COLUMNS = ("number", "timestamp", "base_fee", "gas_used", "gas_limit", "tx_count", "mev_value")
NUMBER, TIMESTAMP, BASE_FEE, GAS_USED, GAS_LIMIT, TX_COUNT, MEV_VALUE = range(len(BLOCK_COLUMNS))
REQUIRED = ("number", "timestamp", "base_fee", "gas_used", "gas_limit")

# Names each column goes by in the formats above (first match wins).
ALIASES: dict[str, tuple[str, ...]] = {
    "number": ("number", "block_number"),
    "timestamp": ("timestamp", "block_timestamp"),
    "base_fee": ("base_fee_per_gas", "base_fee", "basefeepergas"),
    "gas_used": ("gas_used", "gasused"),
    "gas_limit": ("gas_limit", "gaslimit"),
    "tx_count": ("tx_count_relay", "tx_count", "transaction_count", "transactions"),
    "mev_value": ("mev_value_wei",),  # the builder's payment; no Block record carries it
}


class BlockFormatError(ValueError):
    """A block file that is not one of the formats above, or holds no usable row."""


@dataclass
class BlockSeries:
    blocks: np.ndarray  # (N, len(BLOCK_COLUMNS)) float64, strictly increasing numbers
    refused: Counter = field(default_factory=Counter)  # reason -> rows refused

    def __len__(self) -> int:
        return len(self.blocks)

    def summary(self) -> str:
        refused = sum(self.refused.values())
        detail = ", ".join(f"{k} {v}" for k, v in sorted(self.refused.items()))
        return f"{len(self)} blocks" + (f", {refused} rows refused ({detail})" if refused else "")


def _cell(value: Any) -> float:
    """A number from a CSV cell, JSON value or hex quantity; NaN when empty."""
    if value is None or value == "":
        return float("nan")
    if isinstance(value, str) and value.startswith("0x"):
        return float(int(value, 16))
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def _columns(names: Iterable[str], where: str) -> dict[str, str]:
    """Our column -> the source's name for it; BlockFormatError when a required one is absent."""
    lower = {n.strip().lower(): n for n in names}
    found = {}
    for col, aliases in ALIASES.items():
        for alias in aliases:
            if alias in lower:
                found[col] = lower[alias]
                break
    missing = [c for c in REQUIRED if c not in found]
    if missing:
        raise BlockFormatError(f"{where}: missing column(s) {', '.join(ALIASES[c][0] for c in missing)}")
    return found


def _build(rows: Iterable[Mapping[str, Any]], names: dict[str, str]) -> BlockSeries:
    refused: Counter = Counter()
    out: list[list[float]] = []
    last = -1.0
    for row in rows:
        try:
            values = [_cell(row.get(names[c])) if c in names else float("nan") for c in BLOCK_COLUMNS]
        except (ValueError, TypeError):
            refused["unparsable"] += 1
            continue
        if any(not np.isfinite(values[i]) for i in (NUMBER, TIMESTAMP, GAS_USED, GAS_LIMIT)):
            refused["missing_field"] += 1
        elif not np.isfinite(values[BASE_FEE]) or values[BASE_FEE] <= 0:
            refused["no_base_fee"] += 1  # pre-London, or a broken row
        elif values[GAS_LIMIT] <= 0:
            refused["zero_gas_limit"] += 1
        elif values[GAS_USED] < 0 or values[GAS_USED] > values[GAS_LIMIT]:
            refused["gas_used_out_of_range"] += 1
        elif values[NUMBER] <= last:
            refused["non_monotonic_number"] += 1
        else:
            last = values[NUMBER]
            out.append(values)
    blocks = np.asarray(out, dtype=np.float64).reshape(-1, len(BLOCK_COLUMNS))
    return BlockSeries(blocks, refused)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def is_block_file(path: str | Path) -> bool:
    """Whether ``path`` looks like a block series (by its header / first object), not bars.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "b.csv")
    >>> _ = open(p, "w").write("number,timestamp,base_fee_per_gas,gas_used,gas_limit\\n1,12,7,1,2\\n")
    >>> is_block_file(p)
    True
    """
    path = Path(path)
    try:
        with _open_text(path) as fh:
            head = fh.read(4096)
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return False
    first = head.lstrip()[:2048].lower()
    if first.startswith("["):
        return '"number"' in first and ("gas_limit" in first or "gaslimit" in first)
    header = first.splitlines()[0] if first else ""
    return "number" in header.split(",") and "gas_limit" in header


def load_blocks(path: str | Path) -> BlockSeries:
    """Load one block file; see the module docstring."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such block file: {path}")
    with _open_text(path) as fh:
        if path.name.removesuffix(".gz").endswith(".json"):
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise BlockFormatError(f"{path}: not JSON ({exc})") from None
            if not isinstance(data, list) or not data or not isinstance(data[0], Mapping):
                raise BlockFormatError(f"{path}: expected a JSON list of block objects")
            series = _build((r for r in data if isinstance(r, Mapping)), _columns(data[0].keys(), str(path)))
            series.refused["not_an_object"] += sum(not isinstance(r, Mapping) for r in data)
            series.refused = +series.refused  # drop zero counts
        else:
            reader = csv.DictReader(fh)
            if not reader.fieldnames:
                raise BlockFormatError(f"{path}: empty file")
            series = _build(reader, _columns(reader.fieldnames, str(path)))
    if not len(series):
        raise BlockFormatError(f"{path}: no usable block ({series.summary()})")
    return series


def from_records(records: Iterable[Mapping[str, Any]]) -> BlockSeries:
    """Blocks shaped like ``stream.records.Block`` (dicts or model dumps) -> a series.

    >>> s = from_records([{"number": 5, "timestamp": 60, "base_fee": 10**9, "gas_used": 1, "gas_limit": 2,
    ...                    "tx_count": 3}, {"number": 6, "timestamp": 72, "base_fee": None, "gas_used": 1,
    ...                    "gas_limit": 2, "tx_count": 3}])
    >>> s.blocks[:, BASE_FEE].tolist(), dict(s.refused)
    ([1000000000.0], {'no_base_fee': 1})
    """
    return _build(records, {c: c for c in BLOCK_COLUMNS if c != "mev_value"})

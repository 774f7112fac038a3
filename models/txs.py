"""Transaction histories for the value model: reading, refusing, tokens, target.

Formats, detected from the first line:
- ethereum-etl ``transactions.csv`` (``.gz`` too): a header with at least
  ``block_number, transaction_index, from_address, to_address, value, nonce,
  block_timestamp``; ``gas, gas_price, input, transaction_type`` are used when present;
- JSON lines of ``chain.txs`` records (``stream.records.Tx`` as the producer sends them).

Rows come out in chain order (block, index). A row that cannot be a transaction
(an address that is not 20-byte hex, a negative or non-integer value, ...) is
refused and counted by reason; a file that holds no usable row is a
``TxFormatError`` with a one-line message.

Per transaction the model sees tokens (sender and receiver ids from a
``Vocab``, hour and weekday) and ``NUM_FEATURES``; the target is
``log(value_eth + EPS)``. One implementation, used by training and serving.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

WEI_PER_ETH = 10**18
EPS = 1e-6  # ETH: a millionth of an ether; zero-value transactions sit at log(EPS) ~ -13.8
ETL_REQUIRED = ("block_number", "transaction_index", "from_address", "to_address", "value", "nonce",
                "block_timestamp")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_INT = re.compile(r"^[0-9]+$")
MAX_FIELD = 1 << 24  # characters: the largest call data on mainnet is far below

# The numeric features of one transaction, known before its value is revealed.
NUM_FEATURES: tuple[str, ...] = (
    "minute_sin", "minute_cos",  # minute of the hour on a circle
    "log_dt_block",  # log1p(seconds since the previous block's timestamp)
    "log_nonce",  # log1p(sender's nonce): new accounts vs busy ones
    "log_index",  # log1p(index in block)
    "type",  # 0 legacy, 1 access list, 2 EIP-1559
    "log_gas",  # log1p(gas limit): 21000 is a plain transfer
    "log_gas_price",  # log1p(gas price in gwei)
    "log_input",  # log1p(input size in bytes)
    "is_call",  # input not empty: a contract call
    "is_creation",  # no receiver
)
# Token columns of ``ids``: sender id, receiver id, hour (0-23), weekday (0 = Monday).
SENDER, RECEIVER, HOUR, WEEKDAY = range(4)


class TxFormatError(ValueError):
    """A transactions file that cannot be used at all (one line)."""


@dataclass
class TxTable:
    """Transactions in chain order, one array per field."""

    block: np.ndarray  # int64
    index: np.ndarray  # int64, position in block
    timestamp: np.ndarray  # int64, seconds
    sender: np.ndarray  # object: lower-case 0x address
    receiver: np.ndarray  # object: lower-case 0x address, "" for a contract creation
    value_eth: np.ndarray  # float64
    nonce: np.ndarray  # float64 (nonces overflow nothing here, but stay exact enough in float)
    type: np.ndarray  # float64
    gas: np.ndarray  # float64, NaN when unknown
    gas_price: np.ndarray  # float64 wei, NaN when unknown
    input_size: np.ndarray  # float64 bytes, NaN when unknown
    hash: np.ndarray  # object
    block_hash: np.ndarray  # object ("" when unknown)

    def __len__(self) -> int:
        return len(self.block)

    def take(self, idx: np.ndarray | slice) -> TxTable:
        return TxTable(**{k: v[idx] for k, v in self.__dict__.items()})

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> TxTable:
        rows = sorted(rows, key=lambda r: (r["block"], r["index"]))
        def col(name: str, dtype: Any) -> np.ndarray:
            return np.array([r[name] for r in rows], dtype=dtype)
        return cls(block=col("block", np.int64), index=col("index", np.int64), timestamp=col("timestamp", np.int64),
                   sender=col("sender", object), receiver=col("receiver", object),
                   value_eth=col("value_eth", np.float64), nonce=col("nonce", np.float64),
                   type=col("type", np.float64), gas=col("gas", np.float64), gas_price=col("gas_price", np.float64),
                   input_size=col("input_size", np.float64), hash=col("hash", object),
                   block_hash=col("block_hash", object))


@dataclass
class Refusals:
    """Rows refused while reading, counted by reason."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, reason: str) -> None:
        self.counts[reason] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in self.counts.most_common()) or "none"


class RowRefused(ValueError):
    """One row that is not a usable transaction; the message is the reason."""


def address(value: Any, name: str, *, optional: bool = False) -> str:
    """A lower-case 20-byte hex address; "" for an empty optional one.

    >>> address("0xAbBB6BEbfa05aa13e908eaa492bd7a8343760477", "to")
    '0xabbb6bebfa05aa13e908eaa492bd7a8343760477'
    >>> address("0x12", "from")
    Traceback (most recent call last):
    ...
    chaincast.models.txs.RowRefused: from is not a 20-byte hex address
    """
    if optional and (value is None or value == ""):
        return ""
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise RowRefused(f"{name} is not a 20-byte hex address")
    return value.lower()


def wei(value: Any, name: str = "value") -> int:
    """A non-negative integer amount (decimal string, int, or 0x hex).

    >>> wei("1000000000000000000"), wei("0x10")
    (1000000000000000000, 16)
    >>> wei("-1")
    Traceback (most recent call last):
    ...
    chaincast.models.txs.RowRefused: value is negative
    """
    if isinstance(value, bool):
        raise RowRefused(f"{name} is not an integer")
    if isinstance(value, int):
        out = value
    elif isinstance(value, str) and _INT.match(value.strip()):
        out = int(value.strip())
    elif isinstance(value, str) and value.startswith("0x"):
        try:
            out = int(value, 16)
        except ValueError:
            raise RowRefused(f"{name} is not an integer") from None
    elif isinstance(value, str) and value.strip().startswith("-") and _INT.match(value.strip()[1:]):
        raise RowRefused(f"{name} is negative")
    else:
        raise RowRefused(f"{name} is not an integer")
    if out < 0:
        raise RowRefused(f"{name} is negative")
    return out


def _optional_number(value: Any, name: str) -> float:
    return math.nan if value in (None, "") else float(wei(value, name))


def _input_size(data: Any) -> float:
    if data in (None, ""):
        return math.nan
    return max(len(str(data)) - 2, 0) / 2  # hex after 0x, two characters per byte


def etl_row(r: dict[str, str]) -> dict[str, Any]:
    """One ethereum-etl CSV row -> the fields of ``TxTable`` (raises RowRefused)."""
    value = wei(r["value"])
    return {
        "block": wei(r["block_number"], "block_number"), "index": wei(r["transaction_index"], "transaction_index"),
        "timestamp": wei(r["block_timestamp"], "block_timestamp"),
        "sender": address(r["from_address"], "from_address"),
        "receiver": address(r["to_address"], "to_address", optional=True),
        "value_eth": value / WEI_PER_ETH, "nonce": float(wei(r["nonce"], "nonce")),
        "type": _optional_number(r.get("transaction_type"), "transaction_type"),
        "gas": _optional_number(r.get("gas"), "gas"), "gas_price": _optional_number(r.get("gas_price"), "gas_price"),
        "input_size": _input_size(r.get("input")), "hash": r.get("hash") or "", "block_hash": r.get("block_hash") or "",
    }


def record_row(tx: Any) -> dict[str, Any]:
    """One ``stream.records.Tx`` (or its JSON dict) -> the fields of ``TxTable``."""
    d = tx if isinstance(tx, dict) else tx.model_dump(by_alias=True)
    try:
        return {
            "block": wei(d["block"], "block"), "index": wei(d.get("index") or 0, "index"),
            "timestamp": wei(d["timestamp"], "timestamp"), "sender": address(d["from"], "from"),
            "receiver": address(d.get("to"), "to", optional=True), "value_eth": wei(d["value"]) / WEI_PER_ETH,
            "nonce": float(wei(d["nonce"], "nonce")), "type": float(wei(d.get("type") or 0, "type")),
            "gas": _optional_number(d.get("gas"), "gas"), "gas_price": _optional_number(d.get("gas_price"), "gas_price"),
            "input_size": _optional_number(d.get("input_size"), "input_size"), "hash": d.get("hash") or "",
            "block_hash": d.get("block_hash") or "",
        }
    except KeyError as exc:
        raise RowRefused(f"missing field {exc.args[0]}") from None


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _rows(path: Path, refusals: Refusals) -> Iterator[dict[str, Any]]:
    with _open_text(path) as fh:
        first = fh.readline()
        if not first.strip():
            raise TxFormatError(f"{path}: empty file")
        if first.lstrip().startswith("{"):
            for n, line in enumerate([first, *fh], start=1):
                if not line.strip():
                    continue
                try:
                    yield record_row(json.loads(line))
                except json.JSONDecodeError:
                    refusals.add("not JSON")
                except RowRefused as exc:
                    refusals.add(str(exc))
            return
        csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD))  # contract creations carry large inputs
        header = [h.strip() for h in next(csv.reader([first]))]
        missing = [c for c in ETL_REQUIRED if c not in header]
        if missing:
            raise TxFormatError(f"{path}: not an ethereum-etl transactions file (missing columns: {', '.join(missing)})")
        for r in csv.DictReader(fh, fieldnames=header):
            if None in r or any(r.get(c) is None for c in ETL_REQUIRED):
                refusals.add("wrong number of fields")
                continue
            try:
                yield etl_row(r)
            except RowRefused as exc:
                refusals.add(str(exc))


def read_transactions(paths: Iterable[str | Path]) -> tuple[TxTable, Refusals]:
    """Every usable transaction of ``paths`` in chain order, and what was refused.

    Duplicates (the same hash twice, e.g. overlapping files) are kept once.
    """
    refusals = Refusals()
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for p in paths:
        p = Path(p)
        try:
            for row in _rows(p, refusals):
                if row["hash"] and row["hash"] in seen:
                    refusals.add("duplicate hash")
                    continue
                seen.add(row["hash"])
                rows.append(row)
        except (UnicodeDecodeError, gzip.BadGzipFile, csv.Error) as exc:
            raise TxFormatError(f"{p}: unreadable ({type(exc).__name__})") from None
        except OSError as exc:
            raise TxFormatError(f"{p}: {exc.strerror or exc}") from None
    if not rows:
        raise TxFormatError(f"no usable transaction in {', '.join(map(str, paths))} "
                            f"(refused: {refusals.summary()})")
    return TxTable.from_rows(rows), refusals


def target(value_eth: np.ndarray) -> np.ndarray:
    """log(value_eth + EPS).

    >>> target(np.array([0.0, 1.0])).round(3).tolist()
    [-13.816, 0.0]
    """
    return np.log(np.asarray(value_eth, dtype=np.float64) + EPS)


def value_of(y: np.ndarray | float) -> np.ndarray | float:
    """The inverse of ``target``: ETH from the log value (never below zero)."""
    return np.maximum(np.exp(y) - EPS, 0.0)


def _bucket(addr: str, buckets: int) -> int:
    return 1 + int(hashlib.blake2b(addr.encode(), digest_size=4).hexdigest(), 16) % buckets


@dataclass
class Vocab:
    """Address ids: 0 = none (creation, padding), 1..buckets = hashed unknown addresses,
    then the addresses seen at least ``min_count`` times in training."""

    addresses: list[str]
    min_count: int
    buckets: int = 8

    @classmethod
    def fit(cls, table: TxTable, min_count: int = 5, buckets: int = 8) -> Vocab:
        counts = Counter(table.sender.tolist()) + Counter(a for a in table.receiver.tolist() if a)
        return cls(sorted(a for a, n in counts.items() if n >= min_count), min_count, buckets)

    def __post_init__(self) -> None:
        self._index = {a: self.buckets + 1 + i for i, a in enumerate(self.addresses)}

    @property
    def size(self) -> int:
        return self.buckets + 1 + len(self.addresses)

    def id(self, addr: str) -> int:
        """
        >>> v = Vocab(["0x" + "a" * 40], min_count=1, buckets=2)
        >>> v.id("0x" + "a" * 40), v.id(""), 1 <= v.id("0x" + "b" * 40) <= 2
        (3, 0, True)
        """
        if not addr:
            return 0
        known = self._index.get(addr)
        return known if known is not None else _bucket(addr, self.buckets)

    def ids(self, addresses: np.ndarray) -> np.ndarray:
        return np.fromiter((self.id(a) for a in addresses), dtype=np.int64, count=len(addresses))

    def to_card(self) -> dict[str, Any]:
        return {"addresses": self.addresses, "min_count": self.min_count, "buckets": self.buckets}

    @classmethod
    def from_card(cls, d: dict[str, Any]) -> Vocab:
        return cls(list(d["addresses"]), int(d["min_count"]), int(d["buckets"]))


def _prev_block_gap(block: np.ndarray, ts: np.ndarray, prev_ts: int | None = None) -> np.ndarray:
    """Seconds from the previous block's timestamp to each transaction's block (0 for the first)."""
    gap = np.zeros(len(ts), dtype=np.float64)
    if len(ts) == 0:
        return gap
    new_block = np.r_[True, block[1:] != block[:-1]]
    starts = np.flatnonzero(new_block)
    block_ts = ts[starts].astype(np.float64)
    prev = np.r_[np.nan if prev_ts is None else prev_ts, block_ts[:-1]]
    per_block = np.nan_to_num(block_ts - prev, nan=0.0).clip(min=0)
    return per_block[np.cumsum(new_block) - 1]


def token_ids(table: TxTable, vocab: Vocab) -> np.ndarray:
    """ids (N, 4) int64: sender, receiver (from ``vocab``), hour, weekday."""
    ts = table.timestamp
    return np.stack([vocab.ids(table.sender), vocab.ids(table.receiver), (ts // 3600) % 24,
                     (ts // 86400 + 3) % 7], axis=1).astype(np.int64)  # 1970-01-01 was a Thursday


def num_features(table: TxTable, prev_block_ts: int | None = None) -> np.ndarray:
    """(N, len(NUM_FEATURES)) float32; unknown optional fields (NaN) become 0 before the model's scaling.

    ``prev_block_ts`` is the timestamp of the block before the table's first one (live: the last seen).
    """
    angle = 2 * np.pi * ((table.timestamp // 60) % 60) / 60
    num = np.stack([
        np.sin(angle), np.cos(angle),
        np.log1p(_prev_block_gap(table.block, table.timestamp, prev_block_ts)),
        np.log1p(table.nonce), np.log1p(table.index.astype(np.float64)), table.type,
        np.log1p(table.gas), np.log1p(table.gas_price / 1e9), np.log1p(table.input_size),
        (table.input_size > 0).astype(np.float64), (table.receiver == "").astype(np.float64),
    ], axis=1)
    return np.nan_to_num(num, nan=0.0).astype(np.float32)


def tokens(table: TxTable, vocab: Vocab, prev_block_ts: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ids (N, 4) and num (N, F) of a table in chain order."""
    return token_ids(table, vocab), num_features(table, prev_block_ts)


def windows(a: np.ndarray, rows: np.ndarray, window: int) -> np.ndarray:
    """The ``window`` entries of ``a`` ending at each of ``rows`` (each row >= window - 1): (R, window, ...).

    >>> windows(np.arange(5), np.array([2, 4]), 3).tolist()
    [[0, 1, 2], [2, 3, 4]]
    """
    view = np.lib.stride_tricks.sliding_window_view(a, window, axis=0)  # (N - w + 1, ..., w)
    view = np.moveaxis(view, -1, 1)  # (N - w + 1, w, ...)
    return np.ascontiguousarray(view[np.asarray(rows) - window + 1])

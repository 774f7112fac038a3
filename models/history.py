"""Read 1-minute OHLCV history into one array layout used everywhere.

Formats: headered CSV ``timestamp,open,high,low,close,volume`` (timestamp in ms
or ISO 8601; ``.gz`` too), the exchange's own 12-column kline export (with or
without its header), and freqtrade JSON lists ``[[ts, o, h, l, c, v], ...]``.

The result is a float64 array of shape (N, len(BAR_COLUMNS)), sorted by time,
one row per bar; ``trades`` and ``buy_volume`` are NaN where a format lacks them.
Real gaps are kept: no row is invented for a missing minute.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from chaincast.models.timeunits import MINUTE_MS  # noqa: F401 - re-exported for older importers

BAR_COLUMNS = ("ts", "open", "high", "low", "close", "volume", "trades", "buy_volume")
TS, OPEN, HIGH, LOW, CLOSE, VOLUME, TRADES, BUY_VOLUME = range(len(BAR_COLUMNS))
# Optional chain columns after BAR_COLUMNS (bars joined with chain features carry them;
# history files do not): only the ``chain`` feature group reads them.
CHAIN_COLUMNS = ("base_fee_change", "gas_utilisation", "chain_tx_count")
BASE_FEE_CHANGE, GAS_UTILISATION, CHAIN_TX_COUNT = range(len(BAR_COLUMNS), len(BAR_COLUMNS) + len(CHAIN_COLUMNS))


class HistoryFormatError(ValueError):
    """A history file that is not one of the formats above."""


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _ts_ms(value: str | float | int) -> float:
    try:
        ts = float(value)
    except ValueError:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return float(round(dt.timestamp() * 1000))
    if ts > 1e15:  # microseconds (the exchange's exports since 2025)
        ts /= 1000.0
    elif ts < 1e11:  # seconds
        ts *= 1000.0
    return float(round(ts))


def _rows_from_csv(lines: list[list[str]], path: Path) -> np.ndarray:
    if not lines:
        raise HistoryFormatError(f"{path}: empty file")
    header = [h.strip().lower() for h in lines[0]]
    has_header = not _is_number(header[0])
    body = lines[1:] if has_header else lines
    width = len(lines[0])
    if width < 6 or (has_header and width < 11 and header[1:6] != ["open", "high", "low", "close", "volume"]):
        raise HistoryFormatError(f"{path}: need columns timestamp,open,high,low,close,volume")
    out = np.full((len(body), len(BAR_COLUMNS)), np.nan)
    for i, row in enumerate(body):
        if len(row) != width:
            raise HistoryFormatError(f"{path}:{i + 1 + has_header}: expected {width} columns, got {len(row)}")
        try:
            out[i, TS] = _ts_ms(row[0])
            out[i, OPEN:VOLUME + 1] = [float(v) for v in row[1:6]]
            if width >= 11:  # the exchange's kline export: trades at 8, taker buy base volume at 9
                out[i, TRADES] = float(row[8])
                out[i, BUY_VOLUME] = float(row[9])
        except (ValueError, IndexError) as exc:
            raise HistoryFormatError(f"{path}:{i + 1 + has_header}: {exc}") from None
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_bars(path: str | Path) -> np.ndarray:
    """Load one history file; see the module docstring for formats."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such history file: {path}")
    name = path.name.removesuffix(".gz")
    with _open_text(path) as fh:
        if name.endswith(".json"):
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise HistoryFormatError(f"{path}: not JSON ({exc})") from None
            if not isinstance(data, list) or not data or not isinstance(data[0], list):
                raise HistoryFormatError(f"{path}: expected a freqtrade list of [ts, o, h, l, c, v]")
            bars = _rows_from_csv([[str(v) for v in row] for row in data], path)
        else:
            bars = _rows_from_csv([r for r in csv.reader(fh) if r], path)
    bars = bars[np.argsort(bars[:, TS], kind="stable")]
    keep = np.concatenate([[True], np.diff(bars[:, TS]) > 0])  # drop duplicate timestamps
    bars = bars[keep]
    prices = bars[:, OPEN:CLOSE + 1]
    if not np.all(np.isfinite(prices)) or np.any(prices <= 0):
        raise HistoryFormatError(f"{path}: non-positive or non-finite prices")
    return bars


def load_many(paths: list[str | Path]) -> np.ndarray:
    """Load and concatenate several files of one symbol, in time order."""
    bars = np.concatenate([load_bars(p) for p in paths])
    bars = bars[np.argsort(bars[:, TS], kind="stable")]
    keep = np.concatenate([[True], np.diff(bars[:, TS]) > 0])
    return bars[keep]


def symbol_of(path: str | Path) -> str | None:
    """Guess the symbol from a file name such as ``binance_BTCUSDT_1m_2023-03.csv.gz``.

    >>> symbol_of("data/binance_BTCUSDT_1m_2023-03.csv.gz")
    'BTCUSDT'
    >>> symbol_of("ETHUSDT-1m-2022-08-14.csv")
    'ETHUSDT'
    """
    stem = Path(path).name
    for part in stem.replace("-", "_").split("_"):
        if part.isalnum() and part.isupper() and len(part) >= 5 and not part[0].isdigit():
            return part
    return None

"""The retrainer's bounded per-symbol bar history, in the ``models.history`` layout.

Bars are keyed by open time, so a redelivered bar replaces itself instead of
counting twice, and only the newest ``max_bars`` per symbol are kept.
"""

from __future__ import annotations

import numpy as np

from chaincast.models.history import BAR_COLUMNS
from chaincast.stream.predict import bar_row
from chaincast.stream.records import Bar


class BarHistory:
    """``add`` bars, ``arrays`` a snapshot to train on.

    >>> h = BarHistory(max_bars=2)
    >>> b = lambda ts: Bar(exchange="x", symbol="X", ts=ts, open=1, high=1, low=1, close=1, volume=1,
    ...                    trades=1, vwap=1)
    >>> [h.add(b(t)) for t in (0, 60_000, 60_000, 120_000)]
    [True, True, False, True]
    >>> h.arrays()["X"][:, 0].tolist(), len(h)
    ([60000.0, 120000.0], 2)
    """

    def __init__(self, max_bars: int) -> None:
        self.max_bars = max_bars
        self._rows: dict[str, dict[int, list[float]]] = {}

    def add(self, bar: Bar) -> bool:
        """Keep ``bar``; True when it is new (not a redelivery of a held bar)."""
        rows = self._rows.setdefault(bar.symbol, {})
        new = bar.ts not in rows
        rows[bar.ts] = bar_row(bar)
        while len(rows) > self.max_bars:
            # Bars of a symbol arrive in time order (one partition per market), so the first
            # inserted is the oldest: O(1) instead of a scan of the whole history per bar.
            del rows[next(iter(rows))]
        return new

    def arrays(self) -> dict[str, np.ndarray]:
        """Symbol -> (N, len(BAR_COLUMNS)) float64, sorted by time."""
        return {
            sym: np.array([rows[ts] for ts in sorted(rows)], dtype=np.float64).reshape(-1, len(BAR_COLUMNS))
            for sym, rows in self._rows.items()
        }

    def sizes(self) -> dict[str, int]:
        return {sym: len(rows) for sym, rows in self._rows.items()}

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._rows.values())

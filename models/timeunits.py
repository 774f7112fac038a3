"""Time constants and the millisecond clock, one owner for every layer.

Event time in chaincast is integer milliseconds since the epoch (exchange
``ts_event``, bar open times); a bar is one minute.

>>> MINUTE_MS, DAY_MS // MINUTE_MS, minute_of(125_000)
(60000, 1440, 120000)
"""

from __future__ import annotations

import time

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
MINUTES_PER_DAY = DAY_MS // MINUTE_MS


def now_ms() -> int:
    """Wall-clock milliseconds (processing time: metrics and stamps, never windows)."""
    return int(time.time() * 1000)


def minute_of(ts_ms: int) -> int:
    """The open time of the minute that holds ``ts_ms``."""
    return ts_ms - ts_ms % MINUTE_MS

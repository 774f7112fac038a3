"""Bounds on well-formed records that would otherwise wedge a market, defined once.

A trade dated in 2100 would make every later trade "late"; a trade id of 2^62
would make every later one a "duplicate" (in the worker and in the producer's
checkpoint); price 1e300 x qty 1e300 overflows a bar's sums. The producer (at
the edge) and the stream worker both apply these same checks:

- event time no later than now + ``max_clock_skew_s`` (older is fine: a
  backfill after an outage is legitimate; ``clock_check=False`` exempts replays
  and backtests of data dated ahead of this machine's clock);
- a trade id further than ``max_id_jump`` from the last one, either way, is a
  venue reset (ids restarted, or another server): logged loudly, counted, and
  the position re-based, instead of a million duplicates or a gap to backfill;
- the notional (price x qty) and every running sum stay finite.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from prometheus_client import Counter

from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)

RESETS = Counter("chaincast_venue_resets_total", "Trade-id jumps beyond the bound, taken as a venue reset",
                 ["source", "symbol"])


class OutOfBounds(ValueError):
    """A record outside the bounds; the message is the dead-letter reason."""


@dataclass(frozen=True)
class Bounds:
    max_clock_skew_ms: int | None  # None: event time is not checked against the wall clock
    max_id_jump: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "Bounds":
        skew = int(settings.max_clock_skew_s * 1000) if settings.clock_check else None
        return cls(skew, settings.max_id_jump)

    def check_trade(self, ts_event: int, price: float, qty: float, now_ms: int | None = None) -> None:
        """Raise OutOfBounds for a trade dated too far ahead or with a non-finite notional.

        >>> b = Bounds(300_000, 1000)
        >>> b.check_trade(0, 1.0, 1.0, now_ms=1_000)
        >>> b.check_trade(4_102_444_800_000, 1.0, 1.0, now_ms=1_700_000_000_000)
        Traceback (most recent call last):
        ...
        chaincast.stream.bounds.OutOfBounds: future: event time 4102444800000 is 2402444800s ahead of the clock (max 300s)
        >>> b.check_trade(0, 1e300, 1e300, now_ms=1_000)
        Traceback (most recent call last):
        ...
        chaincast.stream.bounds.OutOfBounds: overflow: notional 1e+300 x 1e+300 is not finite
        """
        if self.max_clock_skew_ms is not None:
            now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
            if ts_event > now + self.max_clock_skew_ms:
                raise OutOfBounds(f"future: event time {ts_event} is {(ts_event - now) // 1000}s ahead of the "
                                  f"clock (max {self.max_clock_skew_ms // 1000}s)")
        if not math.isfinite(price * qty):
            raise OutOfBounds(f"overflow: notional {price:g} x {qty:g} is not finite")

    def is_reset(self, last_id: int, trade_id: int) -> bool:
        """Whether ``trade_id`` is so far from ``last_id`` (either way) that the venue restarted its ids.

        >>> b = Bounds(None, 1000)
        >>> b.is_reset(10, 11), b.is_reset(10, 5000), b.is_reset(5000, 3), b.is_reset(-1, 2**62)
        (False, True, True, False)
        """
        return last_id >= 0 and abs(trade_id - last_id) > self.max_id_jump

    def reset(self, source: str, symbol: str, last_id: int, trade_id: int) -> None:
        """Say loudly that ``symbol``'s ids jumped (the caller re-bases its position)."""
        RESETS.labels(source, symbol).inc()
        log.warning("%s %s: trade id jumped from %d to %d (beyond %d): taken as a venue reset, position re-based",
                    source, symbol, last_id, trade_id, self.max_id_jump)


def finite_sum(total: float, add: float, what: str) -> float:
    """``total + add``, or OutOfBounds when the sum leaves the floats.

    >>> finite_sum(1.0, 2.0, "volume")
    3.0
    >>> finite_sum(1.7e308, 1.7e308, "volume")
    Traceback (most recent call last):
    ...
    chaincast.stream.bounds.OutOfBounds: overflow: bar volume would not be finite
    """
    out = total + add
    if not math.isfinite(out):
        raise OutOfBounds(f"overflow: bar {what} would not be finite")
    return out

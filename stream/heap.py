"""Freed heap handed back to the operating system, so a burst does not stay in a worker's RSS.

A worker catching up on a backlog (many markets' bars closing in one batch, a fetch buffer
full of records) allocates far more than it keeps. Python frees those objects, but glibc's
malloc keeps the freed pages in its heap, and the worker's RSS holds that high-water mark for
its life: on the bench's symbol scan, 512 markets on Apache Kafka, about 40 KB per market of
RSS held no object at all (deploy/BENCHMARKS.md). ``trim()`` asks glibc to return it
(``malloc_trim(0)``, as Dask's workers do); the worker calls it every ``TRIM_EVERY_S`` in a
thread (glibc's call releases the GIL, so the event loop goes on) and exports how long it took.
Without glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

from chaincast.stream.metrics import HEAP_TRIM

TRIM_EVERY_S = 10.0  # a trim walks the heap for a few milliseconds: seldom enough to be off the forecasts' tail


@functools.cache
def malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, looked up on first use (not at import); None without glibc."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def trim() -> bool:
    """Return the heap's free pages to the operating system; False where that is not possible."""
    if (release := malloc_trim()) is None:
        return False
    with HEAP_TRIM.time():
        release(0)
    return True

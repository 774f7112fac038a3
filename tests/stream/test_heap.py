"""The worker's heap trim (stream.heap): freed memory really goes back to the OS."""

import sys

import psutil
import pytest
from prometheus_client import REGISTRY

from chaincast.stream import heap

MB = 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's: the workers run on Linux")
def test_trim_returns_a_bursts_freed_heap_to_the_os():
    assert heap.malloc_trim() is not None, "glibc's malloc_trim not found on Linux"
    process = psutil.Process()
    burst = [bytes(4096) for _ in range(50_000)]  # ~200 MB of malloc'd blocks (too big for Python's small-object pools)
    pins = burst[::100]  # what outlives the burst, spread through it: free() alone keeps the holes between
    held = process.memory_info().rss
    del burst
    freed = process.memory_info().rss
    trims = REGISTRY.get_sample_value("chaincast_heap_trim_seconds_count") or 0.0

    assert heap.trim()

    trimmed = process.memory_info().rss
    assert held - freed < 50 * MB, "glibc returned the burst without a trim: this test no longer shows one"
    assert freed - trimmed > 150 * MB
    assert REGISTRY.get_sample_value("chaincast_heap_trim_seconds_count") == trims + 1
    assert len(pins) == 500

"""Running until SIGINT/SIGTERM: the one way chaincast's long-running commands stop cleanly.

A signal sets an ``asyncio.Event`` that the work polls between batches (so cursors and
checkpoints are saved), rather than interrupting it mid-write.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def run_until_signalled(work: Callable[[asyncio.Event], Awaitable[T]],
                              stop: asyncio.Event | None = None) -> T:
    """Await ``work(stop)``; SIGINT/SIGTERM set ``stop`` (a fresh Event unless given)."""
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        return await work(stop)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C (KeyboardInterrupt) inside the block, for synchronous supervisors."""
    def raise_interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

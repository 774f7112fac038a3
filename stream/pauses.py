"""Garbage-collector pauses in a worker: measured, and kept off the forecasts' path.

CPython's full collection (generation 2) walks every tracked object, and the
event loop stands still meanwhile. A serving worker holds ~120,000 of them from
its start-up alone (Faust, aiokafka, onnxruntime's bindings, the models), so a
full collection stopped every forecast in flight for ~54 ms (the bench's
latency phase on Apache Kafka, one worker: 5 full collections, 54 ms each; the
p99 of bar close -> Redis was ~50-60 ms).

``settle()`` freezes what exists once the worker serves (``gc.freeze``: those
objects move to a permanent generation that no collection walks), so later full
collections walk only what came after: the markets' state and what is in
flight (measured: 10 full collections in the same phase, at most 1.7 ms each).
Frozen objects are still freed when their last reference goes; only a reference
cycle among them would outlive its use, and the start-up set (modules, the app,
the clients) lives as long as the worker. A swapped model's session is freed by
reference counting.

Every collection's pause is exported (``chaincast_gc_pause_seconds`` by
generation), so an operator sees a pause before users see a slow forecast.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from chaincast.stream.metrics import GC_PAUSE

log = logging.getLogger(__name__)


class PauseMeter:
    """A ``gc.callbacks`` entry: times each collection into the histogram of its generation.

    >>> meter = PauseMeter()
    >>> meter("start", {"generation": 0}); meter("stop", {"generation": 0})
    >>> 0 <= meter.longest[0] < 1
    True
    """

    def __init__(self) -> None:
        self.started = 0.0
        self.longest = {0: 0.0, 1: 0.0, 2: 0.0}  # seconds, since start
        self.children = {g: GC_PAUSE.labels(str(g)) for g in self.longest}  # labelled once: a callback is hot

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        pause = time.perf_counter() - self.started
        generation = info["generation"]
        self.children[generation].observe(pause)
        if pause > self.longest[generation]:
            self.longest[generation] = pause


METER = PauseMeter()  # one per process


def measure() -> None:
    """Export every collection's pause (idempotent)."""
    if METER not in gc.callbacks:
        gc.callbacks.append(METER)


def settle() -> int:
    """Once the worker serves: collect what start-up left, then freeze the survivors; returns how many."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("froze %d start-up objects: full collections now walk only what came after", frozen)
    return frozen

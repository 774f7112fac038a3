"""Worker gauges sampled on a timer: consumer lag per topic/partition, serving model age.

Lag is the fetch high-water mark minus the consumer's own position, for every
partition the worker is assigned (source topics and, during recovery, table
changelogs). The position runs ahead of processing by what Faust has fetched
and buffered, so a stuck agent barely shows there: the commit lag (high-water
mark minus the last committed offset, what ``kafka-consumer-groups`` reports)
shows it. A partition that has not been fetched yet has no high-water mark and
is skipped rather than reported as zero. Partitions that leave the
assignment (a rebalance) have their series removed, so a dashboard never shows
the stale lag of a partition another worker now owns.

On the embedded broker the same sample sets the worker's fetch wait from the records of its
partitions (``kafka_options.embedded_fetch_wait_ms``): that broker scans whole partitions on
every fetch and cuts the scan off at the wait.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from chaincast.stream import kafka_options
from chaincast.stream.metrics import (
    CONSUMER_COMMIT_LAG,
    CONSUMER_HIGHWATER,
    CONSUMER_LAG,
    CONSUMER_POSITION,
    FETCH_WAIT,
    MODEL_AGE,
)

if TYPE_CHECKING:
    from chaincast.stream.context import Streams

log = logging.getLogger(__name__)

INTERVAL_S = 5.0


class Offsets(NamedTuple):
    position: int
    highwater: int
    committed: int | None = None  # None: never committed (changelogs are read, not committed)


def lags(offsets: Mapping[tuple[str, int], Offsets]) -> dict[tuple[str, int], int]:
    """Messages behind the high-water mark per (topic, partition), never negative.

    >>> lags({("bars.1m", 0): Offsets(position=7, highwater=10), ("bars.1m", 1): Offsets(12, 10)})
    {('bars.1m', 0): 3, ('bars.1m', 1): 0}
    """
    return {tp: max(o.highwater - o.position, 0) for tp, o in offsets.items()}


class LagGauges:
    """Publishes lags and forgets partitions that were revoked."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, int]] = set()

    def publish(self, offsets: Mapping[tuple[str, int], Offsets]) -> None:
        for (topic, partition), lag in lags(offsets).items():
            labels, o = (topic, str(partition)), offsets[(topic, partition)]
            CONSUMER_LAG.labels(*labels).set(lag)
            CONSUMER_POSITION.labels(*labels).set(o.position)
            CONSUMER_HIGHWATER.labels(*labels).set(o.highwater)
            if o.committed is not None:
                CONSUMER_COMMIT_LAG.labels(*labels).set(max(o.highwater - o.committed, 0))
        for topic, partition in self._seen - offsets.keys():
            for gauge in (CONSUMER_LAG, CONSUMER_POSITION, CONSUMER_HIGHWATER, CONSUMER_COMMIT_LAG):
                with contextlib.suppress(KeyError):  # commit lag exists only for committed partitions
                    gauge.remove(topic, str(partition))
        self._seen = set(offsets)


async def read_offsets(consumer, assignment: Iterable) -> dict[tuple[str, int], Offsets]:  # noqa: ANN001 - faust
    """Position and high-water of each assigned partition that has been fetched."""
    out: dict[tuple[str, int], Offsets] = {}
    # Faust keeps the offsets it committed only in this attribute (no public accessor).
    committed = getattr(consumer, "_committed_offset", {})
    for tp in assignment:
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        position = await consumer.position(tp)
        if position is not None:
            done = committed.get(tp)
            out[(tp.topic, tp.partition)] = Offsets(int(position), int(highwater),
                                                    None if done is None else int(done))
    return out


def register(s: "Streams") -> None:
    """Add the sampling timer to the worker's app."""
    gauges = LagGauges()

    adaptive = kafka_options.adaptive_fetch_wait(s.settings)
    FETCH_WAIT.set(s.app.fetch_max_wait_ms)

    @s.app.timer(INTERVAL_S, name="stream.lag")
    async def sample() -> None:
        consumer = s.app.consumer
        assignment = consumer.assignment()
        offsets = await read_offsets(consumer, assignment)
        gauges.publish(offsets)
        if adaptive:  # the embedded broker scans whole partitions: the wait follows their size
            records = sum(o.highwater for o in offsets.values())
            wait = kafka_options.embedded_fetch_wait_ms(records)
            if wait != s.app.fetch_max_wait_ms:
                log.info("fetch wait %d -> %d ms (%d records in the fetched partitions)", s.app.fetch_max_wait_ms,
                         wait, records)
                s.app.set_fetch_wait(wait)
                FETCH_WAIT.set(wait)
        for slot in s.slots:
            model = slot.current
            if model is not None and (created_ms := model.card.get("created_at")):
                MODEL_AGE.labels(slot.name).set(max(time.time() - float(created_ms) / 1000, 0.0))

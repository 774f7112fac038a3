"""Consumer-lag gauges: published per assigned partition, removed when a partition is revoked."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from prometheus_client import REGISTRY

from chaincast.stream.lag import LagGauges, Offsets, read_offsets


class TP(NamedTuple):
    topic: str
    partition: int


class FakeConsumer:
    """The three things stream.lag reads from a Faust consumer."""

    def __init__(self, positions: dict, highwaters: dict, committed: dict) -> None:
        self.positions, self.highwaters, self._committed_offset = positions, highwaters, committed

    def highwater(self, tp: TP) -> int | None:
        return self.highwaters.get(tp)

    async def position(self, tp: TP) -> int | None:
        return self.positions.get(tp)


def sample(name: str, topic: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value(name, {"topic": topic, "partition": str(partition)})


def test_unfetched_partitions_are_skipped_and_committed_is_read() -> None:
    a, b, c = TP("t.lag", 0), TP("t.lag", 1), TP("t.lag-changelog", 0)
    consumer = FakeConsumer({a: 90, b: 5, c: 3}, {a: 100, c: 3}, {a: 40})
    offsets = asyncio.run(read_offsets(consumer, [a, b, c]))
    assert offsets == {("t.lag", 0): Offsets(90, 100, 40), ("t.lag-changelog", 0): Offsets(3, 3, None)}


def test_gauges_follow_the_assignment() -> None:
    gauges = LagGauges()
    gauges.publish({("t.gauge", 0): Offsets(90, 100, 40), ("t.gauge", 1): Offsets(7, 7, None)})
    assert sample("chaincast_consumer_lag_messages", "t.gauge", 0) == 10
    assert sample("chaincast_consumer_commit_lag_messages", "t.gauge", 0) == 60
    assert sample("chaincast_consumer_commit_lag_messages", "t.gauge", 1) is None  # never committed
    gauges.publish({("t.gauge", 1): Offsets(9, 12, 9)})  # partition 0 went to another worker
    assert sample("chaincast_consumer_lag_messages", "t.gauge", 0) is None
    assert sample("chaincast_consumer_commit_lag_messages", "t.gauge", 0) is None
    assert sample("chaincast_consumer_commit_lag_messages", "t.gauge", 1) == 3

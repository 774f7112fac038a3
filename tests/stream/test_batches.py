"""``stream.batches.each_batch`` on a real Faust agent fed through its in-memory test channel (no broker).

What the markets agent's delivery rests on: batches are what has arrived, a write behind them
is taken only between batches, one at a time, and a message is acknowledged only once the write
that covers it has completed; a write that fails leaves its messages unacknowledged.

The first write is held on a gate that the third batch's handler opens, so that write completes
while a batch is being handled and the batches handled meanwhile wait for one write: the order
of events is set by the test, not by sleeps.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust
import pytest

from chaincast.stream import batches
from chaincast.stream.batches import each_batch

OPEN_AT_BATCH = 3  # the handler of this batch opens the first write's gate


class Recorder:
    """The handler and the write behind it, recording what each saw."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.gate = asyncio.Event()
        self.handling = False
        self.batches: list[list[int]] = []
        self.unacked_in_batch: list[bool] = []  # every message of the batch unacknowledged while handled
        self.since_write: list[Any] = []  # events handled since the last write began
        self.writes: list[list[Any]] = []  # the events each write covered
        self.acked_before_written: list[bool] = []
        self.taken_while_handling = False
        self.handled_at: list[float] = []  # loop time each batch was handed over
        self.written_at: list[float] = []  # loop time each write began

    async def handle(self, events: list[faust.EventT]) -> None:
        self.handling = True
        self.handled_at.append(asyncio.get_running_loop().time())
        self.batches.append([e.value for e in events])
        self.unacked_in_batch.append(not any(e.message.acked for e in events))
        if len(self.batches) == OPEN_AT_BATCH:
            self.gate.set()
        for _ in range(20):  # a batch's own awaits (Redis, sends): the opened write completes meanwhile
            await asyncio.sleep(0)
        self.since_write += events
        self.handling = False

    def behind(self) -> Any:
        self.taken_while_handling |= self.handling
        self.written_at.append(asyncio.get_running_loop().time())
        covered, self.since_write = self.since_write, []
        self.writes.append(covered)

        async def write() -> None:
            await self.gate.wait()
            self.acked_before_written.append(any(e.message.acked for e in covered))
            if self.fail:
                raise ConnectionError("changelog not acknowledged")

        return write()


def agent_with(recorder: Recorder, most: int, every_s: float = 0.0, behind: bool = True) -> Any:
    app = faust.App("test-batches", broker="kafka://127.0.0.1:1")  # test_context never connects

    @app.agent(app.channel())
    async def agent(stream):  # noqa: ANN001 - a faust stream
        await each_batch(stream, most, recorder.handle, "test", behind=recorder.behind if behind else None,
                         every_s=every_s)

    return agent


async def until(what: str, done: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.01)


def test_a_write_behind_covers_whole_batches_and_acknowledges_only_once_complete() -> None:
    n = 30
    rec = Recorder()

    async def run() -> list[Any]:
        async with agent_with(rec, most=3).test_context() as agent:
            events = [await agent.put(i) for i in range(n)]
            await until("every message acknowledged", lambda: all(e.message.acked for e in events))
            return events

    events = asyncio.run(run())
    assert [v for b in rec.batches for v in b] == list(range(n))  # every message, in order, once
    assert all(len(b) <= 3 for b in rec.batches) and len(rec.batches) > OPEN_AT_BATCH
    assert all(rec.unacked_in_batch)
    assert not rec.taken_while_handling  # a write never splits a batch
    assert len(rec.writes[1]) > len(rec.batches[1])  # the batches handled while the first write waited: one write
    assert [e.value for w in rec.writes for e in w] == list(range(n))
    assert rec.acked_before_written == [False] * len(rec.writes)
    assert all(e.message.acked for e in events)


def test_a_failed_write_leaves_its_messages_unacknowledged(monkeypatch: pytest.MonkeyPatch) -> None:
    stopped: list[str] = []

    def stop(where: str, exc: BaseException) -> None:  # in the worker: os._exit(75), the messages redone
        stopped.append(f"{where}: {exc}")
        raise asyncio.CancelledError

    monkeypatch.setattr(batches, "stop_unacknowledged", stop)
    rec = Recorder(fail=True)

    async def run() -> list[Any]:
        async with agent_with(rec, most=3).test_context() as agent:
            events = [await agent.put(i) for i in range(9)]
            await until("the failed write", lambda: stopped)
            await asyncio.sleep(0.1)  # anything the write would still do after the stop
            return events

    events = asyncio.run(run())
    assert stopped[0] == "test: changelog not acknowledged"
    assert rec.writes[0] and not any(e.message.acked for e in rec.writes[0])
    assert not any(e.message.acked for e in events)


EVERY_S = 0.3


async def trickle(agent: Any, n: int) -> list[Any]:
    """``n`` messages, one every 20 ms: many batches' worth inside one pacing interval."""
    events = []
    for i in range(n):
        events.append(await agent.put(i))
        await asyncio.sleep(0.02)
    return events


def test_paced_writes_begin_at_most_every_interval_and_the_last_is_not_left_waiting() -> None:
    rec = Recorder()
    rec.gate.set()  # writes complete at once: what is measured is when they begin

    async def run() -> list[Any]:
        async with agent_with(rec, most=3, every_s=EVERY_S).test_context() as agent:
            events = await trickle(agent, 40)  # 0.8 s of messages, then nothing: the last write is due by timer
            await until("every message acknowledged", lambda: all(e.message.acked for e in events))
            return events

    asyncio.run(run())
    gaps = [b - a for a, b in zip(rec.written_at, rec.written_at[1:])]
    assert len(rec.writes) >= 3  # the messages took at least 0.8 s: a write per interval, and the last by timer
    assert any(len(w) > 1 for w in rec.writes)  # a write covers what arrived in its interval
    assert min(gaps) >= EVERY_S - 0.01, gaps  # a busy machine widens the gaps, never narrows them
    assert [e.value for w in rec.writes for e in w] == list(range(40))  # each message in one write, in order
    assert rec.acked_before_written == [False] * len(rec.writes)
    assert not rec.taken_while_handling


def test_paced_batches_without_a_write_behind_gather_what_arrives_meanwhile() -> None:
    rec = Recorder()

    async def run() -> list[Any]:
        async with agent_with(rec, most=100, every_s=EVERY_S, behind=False).test_context() as agent:
            events = await trickle(agent, 40)
            await until("every message acknowledged", lambda: all(e.message.acked for e in events))
            return events

    asyncio.run(run())
    gaps = [b - a for a, b in zip(rec.handled_at, rec.handled_at[1:])]
    assert [v for b in rec.batches for v in b] == list(range(40))
    assert len(rec.batches) >= 3  # the messages took at least 0.8 s: a batch per interval at most
    assert any(len(b) > 1 for b in rec.batches), rec.batches  # what arrived in an interval: one batch
    assert min(gaps) >= EVERY_S - 0.01, gaps  # a busy machine widens the gaps, never narrows them
    assert all(rec.unacked_in_batch)


def test_a_paced_write_begins_at_once_when_the_most_batches_wait_for_it() -> None:
    rec = Recorder()
    rec.gate.set()
    most, full = 2, batches.HELD_BATCHES * 2  # ``full``: the most events that wait for a write
    n = 4 * full

    async def run() -> list[Any]:
        async with agent_with(rec, most=most, every_s=60.0).test_context() as agent:  # an interval the test never sees
            events = [await agent.put(i) for i in range(n)]
            await until("every full hold written", lambda: sum(e.message.acked for e in events) >= n - full)
            return events

    events = asyncio.run(run())
    assert len(rec.writes) >= 4  # the first at once, then one per full hold: a backlog never waits for the pace
    assert all(len(w) >= full for w in rec.writes[1:])
    written = [e.value for w in rec.writes for e in w]
    assert written == list(range(len(written)))  # each message in one write, in order
    assert all(e.message.acked for w in rec.writes for e in w)
    assert not any(e.message.acked for e in events[len(written):])  # the rest waits for its interval

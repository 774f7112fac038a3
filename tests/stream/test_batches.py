"""``stream.batches.each_batch`` on a real Faust agent fed through its in-memory test channel (no broker).

What the markets agent's delivery rests on: batches are what has arrived, a write behind them
is taken only between batches, one at a time, and a message is acknowledged only once the write
that covers it has completed; a write that fails leaves its messages unacknowledged.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest

from chaincast.stream import batches
from chaincast.stream.batches import each_batch


class Recorder:
    """The handler and the write behind it, recording what each saw."""

    def __init__(self, write_s: float = 0.05, fail: bool = False) -> None:
        self.write_s, self.fail = write_s, fail
        self.handling = False
        self.batches: list[list[int]] = []
        self.unacked_in_batch: list[bool] = []  # every message of the batch unacknowledged while handled
        self.since_write: list[Any] = []  # events handled since the last write began
        self.writes: list[list[Any]] = []  # the events each write covered
        self.acked_before_written: list[bool] = []
        self.taken_while_handling = False

    async def handle(self, events: list[faust.EventT]) -> None:
        self.handling = True
        self.batches.append([e.value for e in events])
        self.unacked_in_batch.append(not any(e.message.acked for e in events))
        await asyncio.sleep(0.01)  # a batch's own awaits: Redis, sends
        self.since_write += events
        self.handling = False

    def behind(self) -> Any:
        self.taken_while_handling |= self.handling
        covered, self.since_write = self.since_write, []
        self.writes.append(covered)

        async def write() -> None:
            await asyncio.sleep(self.write_s)
            self.acked_before_written.append(any(e.message.acked for e in covered))
            if self.fail:
                raise ConnectionError("changelog not acknowledged")

        return write()


def agent_with(recorder: Recorder, most: int) -> Any:
    app = faust.App("test-batches", broker="kafka://127.0.0.1:1")  # test_context never connects

    @app.agent(app.channel())
    async def agent(stream):  # noqa: ANN001 - a faust stream
        await each_batch(stream, most, recorder.handle, "test", behind=recorder.behind)

    return agent


def test_a_write_behind_covers_whole_batches_and_acknowledges_only_once_complete() -> None:
    N = 60
    rec = Recorder()

    async def run() -> list[Any]:
        async with agent_with(rec, most=3).test_context() as agent:
            events = []
            for i in range(N):  # paced: writes complete while later batches are being handled
                events.append(await agent.put(i))
                await asyncio.sleep(0.004)
            await asyncio.sleep(0.6)
            return events

    events = asyncio.run(run())
    assert [v for b in rec.batches for v in b] == list(range(N))  # every message, in order, once
    assert all(len(b) <= 3 for b in rec.batches)
    assert all(rec.unacked_in_batch)
    assert not rec.taken_while_handling  # a write never splits a batch
    assert len(rec.writes) < len(rec.batches)  # a write covers every batch handled while the last ran
    assert [e.value for w in rec.writes for e in w] == list(range(N))
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
            events = [await agent.put(i) for i in range(5)]
            await asyncio.sleep(0.3)
            return events

    events = asyncio.run(run())
    assert stopped and stopped[0] == "test: changelog not acknowledged"
    assert not any(e.message.acked for e in rec.writes[0])
    assert not any(e.message.acked for e in events)

"""Batches of what has arrived: how every stream agent takes its records.

``each_batch(stream, most, handle)`` hands ``handle`` the events Faust has
already delivered to the agent, at most ``most`` at a time, and never waits for
more: a lone record (a bar close, a block) is handled at once, while a backlog
is worked through in full batches (one inference, one Redis round trip, one
table write per key). A batch is acknowledged as soon as ``handle`` returns, so
only after it has confirmed its outputs and recorded its state. A ``handle``
that raises ends the worker before the batch is acknowledged
(``stream.failure``): per-record problems are for ``handle`` to dead-letter, so
whatever reaches here is the broker, Redis beyond its budget, or a bug.

An agent that keeps its state in the worker writes it behind instead
(``behind``, as Kafka Streams caches its stores): ``handle`` does the batch's
work that cannot wait (the forecast into Redis), and its outputs are confirmed
and its state recorded by a write that runs beside the next batches. Writes run
one at a time, each covering every batch handled since the last began, and
begin at most every ``every_s`` (back to back without it), so a backlog pays one
state write for many batches, a lone record never waits for the previous
batch's write, and an idle worker writes nothing (what pacing saves is
measured in deploy/BENCHMARKS.md).
The batches a write covers are acknowledged once it completes, in order; a
write that raises ends the worker with them unacknowledged.

Faust's own ``take``/``take_events(n, within)`` are not used: they wake every
``within`` seconds whether or not anything arrived (an idle worker burns CPU on
the wake-ups, a second worker burns it again, and each record waits for the
next one), and they acknowledge a batch in their ``finally`` even when the body
raised.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from chaincast.stream.failure import stop_unacknowledged

if TYPE_CHECKING:
    import faust


HELD_BATCHES = 8  # with ``behind``: batches of ``most`` handled and not yet written before the next waits


async def each_batch(stream: "faust.StreamT", most: int, handle: Callable[[list["faust.EventT"]], Awaitable[None]],
                     source: str, *, behind: Callable[[], Awaitable[None]] | None = None,
                     every_s: float = 0.0) -> None:
    """Hand ``handle`` the stream's events in batches of what has already arrived; acknowledge each once it
    returns (or, with ``behind``, once the write that covers it completes), and end the worker
    unacknowledged (as ``source``) if either raises.

    ``behind`` is called between batches, never while ``handle`` runs: it takes, at once, what
    the batches handled since its last call must make durable, and returns the awaitable that
    does so. At most ``HELD_BATCHES * most`` events wait for a write before the next batch waits
    for it.

    Built as Faust builds ``take_events`` (the stream drained in the background into a buffer
    by a processor), except that a batch is taken as soon as the buffer holds anything, not on
    a timer. Events Faust skips (a paused flow during a rebalance, a past consumer generation)
    never reach the buffer and Faust acknowledges them; what the buffer holds is handled and
    acknowledged even when the drain is blocked, so a rebalance waiting for every event to be
    acknowledged never waits on a batch that no next event would release.

    ``every_s`` paces the work that is off the latency path: with ``behind``, a write begins at
    most every ``every_s`` (batches handled meanwhile wait for the next one, so the state of a
    busy market is written once per interval, not once per batch), or at once when the batches
    waiting for it are the most allowed (a backlog is never held back by the pace); without, a
    batch is taken at most every ``every_s`` (what arrives meanwhile joins it, up to ``most``).
    A paced write or batch waits at most ``every_s`` more to be acknowledged.
    """
    full = HELD_BATCHES * most  # events handled and waiting for a write, at most
    buffer: list[faust.EventT] = []
    filled = asyncio.Event()  # the buffer holds events
    room = asyncio.Event()  # the buffer is below ``most``: the drain may add more
    room.set()

    async def add(value: Any) -> Any:
        event = stream.current_event
        assert event is not None, "a stream over a topic: every value has its event"
        buffer.append(event)
        filled.set()
        if len(buffer) >= most:
            room.clear()
            await stream.wait(room)  # type: ignore[arg-type] - mode's wait takes any awaitable event
        return value

    held: list[faust.EventT] = []  # handled, waiting for the next write (with ``behind``)
    writing: asyncio.Future[None] | None = None  # the write under way
    written = asyncio.Event()  # set when a write completes
    handling = False
    loop = asyncio.get_running_loop()
    last_write = last_batch = -math.inf  # loop times the last write began, the last batch was taken
    timer: asyncio.TimerHandle | None = None  # a paced write, due

    async def write(durable: Awaitable[None], events: list[faust.EventT]) -> None:
        nonlocal writing
        try:
            await durable
        except Exception as exc:  # noqa: BLE001 - outputs or state not durable: never acknowledge them
            stop_unacknowledged(source, exc)
        for event in events:
            await stream.ack(event)
        writing = None
        written.set()
        write_next()

    def write_next() -> None:  # between batches only: what ``behind`` takes is whole batches
        nonlocal writing, last_write, timer
        if behind is None or writing is not None or handling or not held:
            return
        if (wait := last_write + every_s - loop.time()) > 0 and len(held) < full:
            if timer is None:
                timer = loop.call_later(wait, write_when_due)
            return
        if timer is not None:  # held is full: written now, not when due
            timer.cancel()
            timer = None
        last_write = loop.time()
        events = list(held)
        held.clear()
        written.clear()
        writing = asyncio.ensure_future(write(behind(), events))

    def write_when_due() -> None:
        nonlocal timer
        timer = None
        write_next()

    acks, stream.enable_acks = stream.enable_acks, False  # acknowledged here, by batch
    stream.add_processor(add)
    stream._enable_passive(cast("faust.ChannelT", aiter(stream.channel)))  # noqa: SLF001 - as take_events does
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(filled)  # type: ignore[arg-type]
            if not buffer:
                continue
            while len(held) >= full and not stream.should_stop:
                await stream.wait_for_stopped(written)  # type: ignore[arg-type]
            if behind is None and (wait := last_batch + every_s - loop.time()) > 0 and len(buffer) < most:
                await stream.sleep(wait)
            last_batch = loop.time()
            batch = list(buffer)
            buffer.clear()
            filled.clear()
            room.set()
            handling = True
            try:
                await handle(batch)
            except Exception as exc:  # noqa: BLE001 - not one record's fault: never acknowledge this batch
                stop_unacknowledged(source, exc)
            handling = False
            if behind is None:
                for event in batch:
                    await stream.ack(event)
            else:
                held.extend(batch)
                write_next()
    finally:
        if timer is not None:
            timer.cancel()
        stream.enable_acks = acks
        stream._processors.remove(add)  # noqa: SLF001

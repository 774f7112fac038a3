"""Batches of what has arrived: how every stream agent takes its records.

``each_batch(stream, most, handle)`` hands ``handle`` the events Faust has
already delivered to the agent, at most ``most`` at a time, and never waits for
more: a lone record (a bar close, a block) is handled at once, while a backlog
is worked through in full batches (one inference, one Redis round trip, one
table write per key). A batch is acknowledged as soon as ``handle`` returns, so
only after it has confirmed its outputs and recorded its state; a ``handle``
that raises (or ends the worker, ``stream.failure``) leaves it unacknowledged.

Faust's own ``take``/``take_events(n, within)`` are not used: they wake every
``within`` seconds whether or not anything arrived (an idle worker burns CPU on
the wake-ups, a second worker burns it again, and each record waits for the
next one), and they acknowledge a batch in their ``finally`` even when the body
raised.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import faust


async def each_batch(stream: "faust.StreamT", most: int,
                     handle: Callable[[list["faust.EventT"]], Awaitable[None]]) -> None:
    """Hand ``handle`` the stream's events in batches of what has already arrived; acknowledge each once it returns."""
    events = stream.noack()  # acknowledged here, by batch (Faust acknowledges the events it skips itself)
    arrived = events.channel.queue  # what Faust has delivered to this agent that it has not taken yet
    batch: list[faust.EventT] = []
    async for event in events.events():
        batch.append(event)
        if len(batch) >= most or arrived.empty():
            await handle(batch)
            for done in batch:
                done.ack()
            batch = []

"""Batches of what has arrived: how every stream agent takes its records.

``batches(stream, most)`` yields the events Faust has already delivered to the
agent, at most ``most`` at a time, and never waits for more: a lone record (a
bar close, a block) is handled at once, while a backlog is worked through in
full batches (one inference, one Redis round trip, one table write per key).
A batch is acknowledged when the agent asks for the next one, so only after its
body has confirmed its outputs and recorded its state; a body that raises (or
ends the worker, ``stream.failure``) leaves it unacknowledged.

Faust's own ``take``/``take_events(n, within)`` are not used: they wake every
``within`` seconds whether or not anything arrived (an idle worker burns CPU on
the wake-ups, a second worker burns it again, and each record waits for the
next one), and they acknowledge a batch in their ``finally`` even when the body
raised.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import faust


async def batches(stream: "faust.StreamT", most: int) -> AsyncIterator[list["faust.EventT"]]:
    """The stream's events in batches of what has already arrived, each acknowledged once the next is asked for."""
    events = stream.noack()  # acknowledged here, by batch (Faust acknowledges the events it skips itself)
    arrived = events.channel.queue  # what Faust has delivered to this agent that it has not taken yet
    batch: list[faust.EventT] = []
    async for event in events.events():
        batch.append(event)
        if len(batch) >= most or arrived.empty():
            yield batch  # resumes only when the body is done with the batch: not after it raised
            for done in batch:
                done.ack()
            batch = []

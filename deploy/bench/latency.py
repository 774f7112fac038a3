"""Bar close -> forecast readable in Redis, timed from the outside.

A producer sends each timed close (the first trade of a new minute, alone in its
message) at a fixed rate, markets round robin, and notes ``perf_counter`` just
before the send; a reader thread blocks in ``XREAD BLOCK`` on the Redis streams
the worker writes and notes when each entry (id = the closed bar's time)
becomes visible. The difference is everything a forecast crosses: producer,
broker, the worker (decode, bar fold, window, inference, Redis write, topic
sends) and the Redis notification. The first second is left out (WARM_S).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import redis
from aiokafka import AIOKafkaProducer

from chaincast.deploy.bench.plan import WARM_S, Close
from chaincast.stream import kafka_options
from chaincast.stream.settings import Settings

SETTLE_S = 3.0  # after the last send: wait for the last forecasts until none came for this long
CATCH_UP_S = 60.0  # ... or at most this long


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile(list(range(1, 101)), 99)
    (2.0, 99)
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


class HistoryReader(threading.Thread):
    """``XREAD BLOCK`` on Redis streams; notes when each entry became visible."""

    def __init__(self, url: str, keys: Mapping[str, str]) -> None:  # symbol -> stream key
        super().__init__(daemon=True, name="bench-xread")
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.symbol_of = {key: sym for sym, key in keys.items()}
        self.ids = {key: (self.client.xrevrange(key, count=1) or [("0-0", {})])[0][0] for key in keys.values()}
        self.seen: dict[tuple[str, int], tuple[float, dict[str, str]]] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for key, entries in self.client.xread(self.ids, block=200) or []:
                now = time.perf_counter()
                for entry_id, fields in entries:
                    self.ids[key] = entry_id
                    self.seen.setdefault((self.symbol_of[key], int(entry_id.split("-")[0])), (now, fields))

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=2)
        self.client.close()


@dataclass
class Timed:
    """What the producer side saw: (symbol, closed bar ts) -> perf_counter before the send, and
    the send -> broker acknowledgement time of each timed message."""

    sent: dict[tuple[str, int], float]
    ack_ms: list[float]


async def send_closes(settings: Settings, closes: Sequence[Close], per_s: float, topic: str | None = None,
                      halfway: Callable[[], Awaitable[object]] | None = None) -> Timed:
    """Send ``closes`` at ``per_s`` (each close's untimed remainder half a step later)."""
    producer = AIOKafkaProducer(**kafka_options.producer(settings))
    await producer.start()
    topic = topic or settings.topic_trades
    step = 1 / per_s
    sent: dict[tuple[str, int], float] = {}
    ack_ms: list[float] = []
    pending: list[asyncio.Future] = []
    swap = None

    def acked(t_sent: float) -> Callable[[asyncio.Future], None]:
        return lambda fut: fut.cancelled() or fut.exception() or ack_ms.append((time.perf_counter() - t_sent) * 1000)

    try:
        start = time.perf_counter()
        for k, close in enumerate(closes):
            if halfway is not None and swap is None and k >= len(closes) / 2:
                swap = asyncio.create_task(halfway())
            await asyncio.sleep(max(start + k * step - time.perf_counter(), 0))
            t_sent = sent[(close.symbol, close.bar_ts)] = time.perf_counter()
            fut = await producer.send(topic, close.closer, key=close.key)
            fut.add_done_callback(acked(t_sent))
            pending.append(fut)
            if close.rest is not None:
                await asyncio.sleep(max(start + (k + 0.5) * step - time.perf_counter(), 0))
                pending.append(await producer.send(topic, close.rest, key=close.key))
        await asyncio.gather(*pending)
        if swap is not None:
            await swap
    finally:
        await producer.stop()
    return Timed(sent, ack_ms)


@dataclass
class Latency:
    e2e_ms: list[float]
    stage_ms: list[float]  # the forecast's own latency_ms field (inside the worker), when it has one
    ack_ms: list[float]  # producer send -> broker acknowledgement
    closes_sent: int
    seen: dict[tuple[str, int], tuple[float, dict[str, str]]]
    stages_ms: dict[str, float] = field(default_factory=dict)  # the worker's own stage means, when read

    @property
    def p50(self) -> float:
        return percentile(self.e2e_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.e2e_ms, 99)

    def summary(self) -> dict[str, float | int]:
        return {"p50_ms": self.p50, "p99_ms": self.p99, "samples": len(self.e2e_ms),
                "missing": self.closes_sent - len(self.e2e_ms), "producer_ack_ms_p50": percentile(self.ack_ms, 50)}


def catch_up(reader: HistoryReader, expected: set[tuple[str, int]]) -> None:
    """Until every timed close is seen, or none came for SETTLE_S (at most CATCH_UP_S): a busy
    worker's late forecasts are counted, not lost; a close without a forecast is reported missing."""
    deadline = time.monotonic() + CATCH_UP_S
    seen, quiet_since = len(reader.seen), time.monotonic()
    while not expected <= reader.seen.keys() and time.monotonic() < deadline:
        time.sleep(0.05)
        if len(reader.seen) != seen:
            seen, quiet_since = len(reader.seen), time.monotonic()
        elif time.monotonic() - quiet_since >= SETTLE_S:
            return


def measure(settings: Settings, keys: Mapping[str, str], closes: Sequence[Close], per_s: float,
            topic: str | None = None, halfway: Callable[[], Awaitable[object]] | None = None) -> Latency:
    """Time ``closes`` into the Redis streams ``keys`` (symbol -> stream key)."""
    reader = HistoryReader(settings.redis_url or "", keys)
    reader.start()
    try:
        timed = asyncio.run(send_closes(settings, closes, per_s, topic, halfway))
        catch_up(reader, set(timed.sent))
    finally:
        reader.stop()
    warm = min(timed.sent.values()) + WARM_S
    e2e, stage = [], []
    for key, t_sent in timed.sent.items():
        if key in reader.seen and t_sent >= warm:
            t_seen, fields = reader.seen[key]
            e2e.append((t_seen - t_sent) * 1000)
            if "latency_ms" in fields:
                stage.append(float(fields["latency_ms"]))
    return Latency(e2e, stage, timed.ack_ms, sum(1 for t in timed.sent.values() if t >= warm), reader.seen)

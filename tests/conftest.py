"""Shared fixtures: the real embedded broker (Tansu) and Redis server (Valkey), once per session."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chaincast.deploy.embedded import Process, embedded_stack, free_port, redis_binary, wait_for_port
from chaincast.stream.settings import Settings
from chaincast.stream.topics import TOPICS

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "fixtures" / "data"  # real slices shipped with the repo (see its README)
PROJECT_DATA = REPO / "deploy" / "data"


BROKERS = ("tansu", "kafka")


@pytest.fixture(autouse=True)
def _private_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never the user's own CHAINCAST_HOME (its registry, tokens, or the env file of a running `up`)."""
    monkeypatch.setenv("CHAINCAST_HOME", str(tmp_path_factory.mktemp("home")))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--broker", choices=(*BROKERS, "both"), default="both",
                     help="broker(s) the integration tests run on: the embedded Tansu, Apache Kafka, or both")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every test that needs a broker runs once per chosen broker (the `stack` fixture's parameter).
    if "broker_kind" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--broker")
        kinds = BROKERS if chosen == "both" else (chosen,)
        if chosen == "both" and metafunc.definition.get_closest_marker("one_broker"):
            kinds = ("tansu",)  # the broker is not what the test is about: the zero-setup default suffices
        metafunc.parametrize("broker_kind", kinds, scope="module")


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Apache Kafka node (KRaft, from deploy/kafka/lib) for the session: tests use their own topics."""
    from chaincast.deploy.kafka import kafka_cluster

    with kafka_cluster(tmp_path_factory.mktemp("kafka")) as cluster:
        yield cluster.bootstrap


@pytest.fixture(scope="module")
def stack(broker_kind: str, request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Env pointing at a real broker and Redis server.

    Tansu: fresh for each test module, with the embedded workarounds on (a broker that
    already held every other module's topics was seen to lose the head of a partition
    under the crash tests; a fresh one costs a fraction of a second). Apache Kafka: one
    node for the session, the production client settings (no workarounds).
    """
    if broker_kind == "kafka":
        bootstrap = request.getfixturevalue("kafka_server")
        with embedded_stack(tmp_path_factory.mktemp("stack"), broker=False) as env:
            yield {**env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    else:
        with embedded_stack(tmp_path_factory.mktemp("stack")) as env:
            yield env


@pytest.fixture(scope="module")
def broker(stack: dict[str, str]) -> str:
    return stack["KAFKA_BOOTSTRAP_SERVERS"]


@pytest.fixture(scope="module")
def redis_url(stack: dict[str, str]) -> str:
    return stack["REDIS_URL"]


@pytest.fixture
def settings_for(stack: dict[str, str], tmp_path: Path):
    """Build Settings against the embedded stack; each test gets its own topic names and app id.

    Topics are per test (a unique suffix) so tests on one broker never see each other's data.
    """
    counter = iter(range(1_000_000))

    def build(**env: str) -> Settings:
        suffix = f"{tmp_path.name}-{next(counter)}".replace("_", "-")
        base = {
            **stack,
            "CHAINCAST_HOME": str(tmp_path / "home"),
            "CHAINCAST_APP_ID": f"cc-{suffix}",
            "CHAINCAST_REDIS_PREFIX": f"t{suffix}:",
            "CHAINCAST_METRICS_PORT": "0",
        }
        for topic in TOPICS:
            base[Settings.model_fields[topic.setting].validation_alias] = f"{topic.default}.{suffix}"
        base.update(env)
        return Settings(**base)

    return build


@pytest.fixture
def small_fs() -> Iterator[Callable[[Path, int], Path]]:
    """Mount a size-limited tmpfs at a path (a disk that fills up); unmounted after the test.

    Mounting needs root (CAP_SYS_ADMIN): where that is refused the test fails with the
    mount's own message rather than passing without the fault it is about.
    """
    mounted: list[Path] = []

    def mount(path: Path, size_bytes: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"cannot mount a {size_bytes}-byte tmpfs at {path} (root needed): {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` up to the last byte with one file; returns it (delete it to free)."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as fh:
        while True:
            try:
                fh.write(chunk)
            except OSError:
                break
        for size in (4096, 512, 1):  # the last partial chunk
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                continue
    return filler


def start_persistent_redis(data_dir: Path, port: int | None = None) -> tuple[Process, int]:
    """A Valkey that keeps its data across a restart (append-only file, fsync per write)."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
            "--appendfsync", "always", "--dir", str(data_dir)]
    proc = Process("redis", argv, log_path=data_dir / "redis.log").start()
    wait_for_port(port, proc.popen, 30, "redis")
    return proc, port

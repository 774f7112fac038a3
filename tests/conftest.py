"""Shared fixtures: the real embedded broker (Tansu) and Redis server (Valkey), once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chaincast.deploy.embedded import embedded_stack
from chaincast.stream.settings import Settings
from chaincast.stream.topics import TOPICS

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "fixtures" / "data"  # real slices shipped with the repo (see its README)
PROJECT_DATA = REPO / "deploy" / "data"


@pytest.fixture(autouse=True)
def _private_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never the user's own CHAINCAST_HOME (its registry, tokens, or the env file of a running `up`)."""
    monkeypatch.setenv("CHAINCAST_HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Env pointing at a real embedded broker and Redis server, fresh for each test module.

    Per module, not per session: under the crash tests, a broker that already holds every
    other module's topics was seen to lose the head of a partition (Tansu 0.6.0, memory
    storage); a fresh one per module costs a fraction of a second.
    """
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

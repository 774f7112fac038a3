"""Apache Kafka stopped for 20 s mid-run: after recovery no trade, bar or forecast is missing.

Kafka only: the embedded broker (Tansu) keeps everything in memory, so a restart
loses every topic by design; there is nothing to recover on it. The node is this
module's own (deploy.kafka.kafka_cluster), not the session's, because the test
stops and restarts it on the same ports and data directory.

The first half of a replayed day goes in; while the worker is still turning it into
bars the node is stopped (SIGTERM, a controlled shutdown), stays away for 20 s, and
comes back; then the second half goes in. The test plays the supervisor's part: a
worker that stopped itself before acknowledging a batch (exit 75, stream.failure) or
that Faust ended once the broker stayed away past its metadata timeout (exit 1) is
started again, as Kubernetes or compose would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from chaincast.deploy.embedded import Process, embedded_stack
from chaincast.producers.replay import Market, replay
from chaincast.stream import kafka_options
from chaincast.stream.records import Bar, Prediction, TradeBatch
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.settings import Settings
from tests.integration.conftest import day_of, read_all, start_worker, serve_model
from tests.integration.test_pipeline import CLOSED_PER_SYMBOL, SYMBOLS, assert_bars_match_file, bars_by_symbol, \
    expected_predictions

OUTAGE_S = 20


@pytest.fixture(scope="module")
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    if request.config.getoption("--broker") == "tansu":
        pytest.skip("Apache Kafka not selected (--broker tansu); the embedded broker loses everything on a restart")
    from chaincast.deploy.kafka import kafka_cluster

    root = tmp_path_factory.mktemp("outage")
    with kafka_cluster(root / "kafka") as cluster, embedded_stack(root / "redis", broker=False) as env:
        yield cluster, {**env, "KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap}


class Supervisor:
    """Restarts the worker whenever it has stopped, as Kubernetes or compose would; remembers the exit codes."""

    def __init__(self, settings: Settings, logs) -> None:
        self.settings, self.logs = settings, logs
        self.workers: list[Process] = []
        self.exits: list[int | None] = []
        self.start()

    def start(self) -> None:
        self.workers.append(start_worker(self.settings, self.logs / f"w{len(self.workers)}"))

    def check(self) -> None:
        if not self.workers[-1].alive():
            self.exits.append(self.workers[-1].popen.returncode)
            self.start()

    def wait(self, what: str, done: Callable[[], bool], timeout: float = 600,
             state: Callable[[], object] = lambda: None) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"gave up waiting for {what} ({state()}); worker exits {self.exits}"
            self.check()
            time.sleep(1)

    def stop(self) -> list[int | None]:
        return [w.stop(timeout=60) for w in self.workers]


def kinds(settings: Settings, topic: str) -> list:
    return asyncio.run(read_all(settings, topic))


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a JVM broker started twice, a day replayed, on a shared two-core machine
def test_kafka_stopped_20s_mid_run_nothing_missing(node, tmp_path):
    cluster, env = node
    settings = asyncio.run(kafka_options.resolve(Settings(**env, CHAINCAST_HOME=str(tmp_path / "home"),
                                                          CHAINCAST_APP_ID="cc-outage")))
    serve_model(settings)
    days = {s: day_of(s) for s in SYMBOLS}
    half = CLOSED_PER_SYMBOL // 2
    n = expected_predictions(settings)
    keys = RedisLayout.of(settings)
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)

    def bars() -> list:
        return kinds(settings, settings.topic_bars)

    def per_symbol() -> dict[str, int]:
        """Distinct bars per symbol on the topic (a partition read back short shows here, by name)."""
        seen = {(b.symbol, b.ts) for b in (Bar.loads(m.value) for m in bars())}
        return {s: sum(1 for sym, _ in seen if sym == s) for s in SYMBOLS}

    supervisor = Supervisor(settings, tmp_path)
    try:
        sent = asyncio.run(replay(settings, [Market(s, days[s][:half]) for s in SYMBOLS]))
        supervisor.wait("the worker's first bars", lambda: len(bars()) >= 100)
        cluster.node(1).process.stop(60)  # the broker goes away while the worker is mid-stream
        time.sleep(OUTAGE_S)  # the outage under test, not a wait for a condition
        cluster.restart(1)
        sent += asyncio.run(replay(settings, [Market(s, days[s][half:]) for s in SYMBOLS]))
        supervisor.wait("every bar", lambda: sum(per_symbol().values()) >= 2 * CLOSED_PER_SYMBOL, state=per_symbol)
        supervisor.wait("every forecast in Redis", lambda: all(r.xlen(keys.history(s)) >= n for s in SYMBOLS))

        def forecasts() -> set[tuple[str, int]]:
            return {(p.symbol, p.bar_ts) for p in (Prediction.loads(m.value)
                                                   for m in kinds(settings, settings.topic_predictions))}

        # The topic send follows the Redis write: the last batch's may still be in flight.
        supervisor.wait("every forecast on the topic", lambda: len(forecasts()) >= 2 * n, timeout=300,
                        state=lambda: len(forecasts()))
        trade_msgs = kinds(settings, settings.topic_trades)
        bar_msgs = bars()
        preds = forecasts()
        stored = {s: r.xlen(keys.history(s)) for s in SYMBOLS}
    finally:
        codes = supervisor.stop()
    last_log = tmp_path / f"w{len(codes) - 1}" / "worker.log"
    assert codes[-1] == 0, last_log.read_text()[-3000:]
    # Measured: Faust ends a worker whose broker stays away past the client's metadata timeout (exit 1,
    # "Unable to get cluster metadata"), or the worker stops itself before acking (75); either way the
    # restarted worker redoes the unacknowledged batch.
    assert set(supervisor.exits) <= {1, 75}, supervisor.exits
    trades = [t for m in trade_msgs for t in TradeBatch.loads(m.value).trades]
    assert len(trades) == sent and len({(t.symbol, t.trade_id) for t in trades}) == sent  # every trade, once
    assert_bars_match_file(bars_by_symbol(bar_msgs))
    assert len(preds) == 2 * n
    assert stored == {s: n for s in SYMBOLS}  # every forecast in Redis, once

"""Replication and failover on a three-node Apache Kafka cluster (KRaft, loopback).

Topics and Faust changelogs get three replicas and min.insync.replicas 2 by
default on three brokers. Mid-replay, the broker leading a partition of the
trades topic is killed with SIGKILL: the producer, the worker and the readers
carry on with the other two, and no trade, bar or forecast is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
from aiokafka.admin import AIOKafkaAdminClient

from chaincast.consumers.promotion import announce
from chaincast.consumers.registry import Registry
from chaincast.deploy.embedded import embedded_stack
from chaincast.models.build import build_model
from chaincast.producers.replay import replay
from chaincast.stream import kafka_options
from chaincast.stream.records import market_key
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.settings import Settings
from chaincast.stream.topics import ensure_topics
from tests.integration.conftest import day_of, markets, read_topic, start_worker
from tests.integration.test_pipeline import SYMBOLS, all_bars, assert_bars_match_file, bars_by_symbol, expected_predictions


REPLAY_SPEED = 1440.0  # a day of 1-minute bars in 60 s of wall time


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    if request.config.getoption("--broker") == "tansu":
        pytest.skip("Apache Kafka not selected (--broker tansu); the embedded broker is a single node")
    from chaincast.deploy.kafka import kafka_cluster

    root = tmp_path_factory.mktemp("three")
    with kafka_cluster(root / "kafka", nodes=3) as three, embedded_stack(root / "redis", broker=False) as env:
        yield three, {**env, "KAFKA_BOOTSTRAP_SERVERS": three.bootstrap}


async def replicas_and_isr(settings: Settings, topic: str) -> tuple[set[int], str]:
    """Replica counts of ``topic``'s partitions and its min.insync.replicas, once every broker knows the topic
    (one that has not seen it yet answers with an error and no entries: ask again, up to a minute)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(**kafka_options.admin(settings))
    await admin.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            (desc,) = await admin.describe_topics([topic])
            (configs,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            error_code, error, *_, config_entries = configs.resources[0]
            entries = {c[0]: c[1] for c in config_entries}
            if (desc["partitions"] and "min.insync.replicas" in entries) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert "min.insync.replicas" in entries, f"describe_configs({topic}): error {error_code} {error}"
        return {len(p["replicas"]) for p in desc["partitions"]}, entries["min.insync.replicas"]
    finally:
        await admin.close()


@pytest.mark.slow
def test_leader_of_a_trades_partition_killed_mid_run_nothing_lost(cluster, tmp_path):
    three, env = cluster
    settings = asyncio.run(kafka_options.resolve(Settings(**env, CHAINCAST_HOME=str(tmp_path / "home"),
                                                          CHAINCAST_APP_ID="cc-failover")))
    assert settings.replication_factor == 3 and settings.min_insync_replicas == 2  # the defaults on three brokers
    asyncio.run(ensure_topics(settings))
    assert asyncio.run(replicas_and_isr(settings, settings.topic_trades)) == ({3}, "2")
    registry = Registry(settings.registry_dir)
    entry = build_model([day_of("BTCUSDT")], "persistence", settings.window, settings.horizon, registry,
                        name=settings.model_name)
    registry.set_champion(settings.model_name, entry.version)
    asyncio.run(announce(settings, settings.model_name, entry))

    # The partition BTCUSDT's trades go to (the default partitioner, as the producer uses).
    from aiokafka.partitioner import DefaultPartitioner

    key = market_key(settings.exchange, "BTCUSDT").encode()
    partition = DefaultPartitioner()(key, list(range(settings.partitions)), list(range(settings.partitions)))
    victim = three.leader_of(settings.topic_trades, partition)
    worker = start_worker(settings, tmp_path)
    try:
        async def replay_and_kill_leader() -> None:
            # Paced (the day in about a minute): unpaced, the replay had sent everything before the
            # worker's first bars came out, so the kill hit no producer.
            job = asyncio.create_task(replay(settings, markets(), speed=REPLAY_SPEED))
            await read_topic(settings, settings.topic_bars, lambda m: len(m) >= 50)  # the worker is running
            assert not job.done(), "the replay finished before the kill"
            await asyncio.to_thread(three.kill, victim)  # SIGKILL: no controlled shutdown
            await job

        asyncio.run(replay_and_kill_leader())
        live = {n.node_id for n in three.nodes if n.alive()}
        for _ in range(120):  # the controller fences the dead broker after its session timeout
            if three.leader_of(settings.topic_trades, partition) in live:
                break
            time.sleep(1)
        assert three.leader_of(settings.topic_trades, partition) in live - {victim}
        bar_msgs = asyncio.run(read_topic(settings, settings.topic_bars, all_bars, timeout=240))
        n = expected_predictions(settings)
        preds = asyncio.run(read_topic(settings, settings.topic_predictions, lambda m: len(m) >= 2 * n, timeout=180))
        assert worker.alive(), (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        worker.stop(30)

    assert_bars_match_file(bars_by_symbol(bar_msgs))
    assert len({(m.key, m.value) for m in preds}) >= 2 * n
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    for sym in SYMBOLS:  # every forecast in the history, once
        assert r.xlen(RedisLayout.of(settings).history(sym)) == n

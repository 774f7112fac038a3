"""Topic names and their creation.

Names come from the settings (DESIGN.md defaults). ``ensure_topics`` creates
them with the configured partition count before anything produces, so a
producer that starts first never gets a broker-default single partition.
"""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from chaincast.stream import kafka_options
from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)


def partitioned_topics(settings: Settings) -> list[str]:
    """Per-market topics spread over the workers by key."""
    return [settings.topic_trades, settings.topic_bars, settings.topic_predictions, settings.topic_exchange_klines]


def single_partition_topics(settings: Settings) -> list[str]:
    """Ordered, low-volume streams: blocks and txs (one chain), model updates, dead letters, gaps."""
    return [settings.topic_blocks, settings.topic_txs, settings.topic_models, settings.topic_deadletter,
            settings.topic_gaps]


async def ensure_topics(settings: Settings) -> None:
    """Create the missing topics with the settings' partitions and replication factor.

    An existing topic with fewer replicas than asked is refused (KafkaSetupError):
    it would silently lose data when its one broker goes, whatever acks=all promises.
    """
    rf = kafka_options.replication_factor(settings)
    configs = kafka_options.topic_configs(settings)
    admin = AIOKafkaAdminClient(**kafka_options.admin(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        ours = partitioned_topics(settings) + single_partition_topics(settings)
        if rf > 1 and (present := [t for t in ours if t in existing]):
            for desc in await admin.describe_topics(present):
                have = min((len(p["replicas"]) for p in desc["partitions"]), default=rf)
                if have < rf:
                    raise kafka_options.KafkaSetupError(
                        f"topic {desc['topic']} has {have} replica(s), CHAINCAST_REPLICATION_FACTOR asks {rf}")
        wanted = [NewTopic(t, settings.partitions, rf, topic_configs=configs)
                  for t in partitioned_topics(settings) if t not in existing]
        wanted += [
            NewTopic(t, 1, rf, topic_configs={**configs, **({"cleanup.policy": "compact"}
                                                           if t == settings.topic_models else {})})
            for t in single_partition_topics(settings)
            if t not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:  # a concurrent creator won; fine
                pass
            log.info("created topics %s", [t.name for t in wanted])
    finally:
        await admin.close()

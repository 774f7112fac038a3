"""Topic names and their creation.

Names come from the settings (DESIGN.md defaults). ``ensure_topics`` creates
them with the configured partition count before anything produces, so a
producer that starts first never gets a broker-default single partition.
"""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)


def partitioned_topics(settings: Settings) -> list[str]:
    """Per-market topics spread over the workers by key."""
    return [settings.topic_trades, settings.topic_bars, settings.topic_predictions, settings.topic_exchange_klines]


def single_partition_topics(settings: Settings) -> list[str]:
    """Ordered, low-volume streams: blocks and txs (one chain), model updates, dead letters, gaps, alerts."""
    return [settings.topic_blocks, settings.topic_txs, settings.topic_models, settings.topic_deadletter,
            settings.topic_gaps, settings.topic_alerts]


async def ensure_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [NewTopic(t, settings.partitions, 1) for t in partitioned_topics(settings) if t not in existing]
        wanted += [
            NewTopic(t, 1, 1, topic_configs={"cleanup.policy": "compact"} if t == settings.topic_models else {})
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

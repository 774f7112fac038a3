"""The topic registry: every topic chaincast uses, its default name and its config, in one list.

``TOPICS`` is the only place a topic's default name is written (a test enforces
it): ``Settings`` takes its ``topic_*`` defaults from here, ``ensure_topics``
creates every topic from it before anything produces (so a producer that starts
first never gets a broker-default single partition), and ``renamed`` gives a
run its own copies (tests, the bench).

>>> [t.default for t in TOPICS if t.per_market]
['ticks.trades', 'bars.1m', 'predictions', 'bars.exchange']
>>> DEFAULTS["topic_models"], dict(by_field("topic_models").config)
('models.updates', {'cleanup.policy': 'compact'})
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Topic:
    setting: str  # the Settings field (and so the CHAINCAST_TOPIC_* variable) that names it
    default: str
    # Per-market topics are keyed by market and spread over the workers (settings.partitions);
    # the others are ordered, low-volume streams in one partition.
    per_market: bool
    config: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    doc: str = ""


TOPICS: tuple[Topic, ...] = (
    Topic("topic_trades", "ticks.trades", True, doc="trades (or one symbol's trade batches), key exchange:SYMBOL"),
    Topic("topic_bars", "bars.1m", True, doc="1-minute bars with chain features, key exchange:SYMBOL"),
    Topic("topic_blocks", "chain.blocks", False, doc="Ethereum blocks and reorg retractions, key chain id"),
    Topic("topic_txs", "chain.txs", False, doc="transactions (opt-in), key chain id"),
    Topic("topic_predictions", "predictions", True, doc="forecasts, key exchange:SYMBOL"),
    Topic("topic_models", "models.updates", False, MappingProxyType({"cleanup.policy": "compact"}),
          doc="model announcements, key model name; compacted: the latest per name is the champion"),
    Topic("topic_deadletter", "deadletter", False, doc="refused input with the reason, key source"),
    Topic("topic_exchange_klines", "bars.exchange", True, doc="the exchange's own closed klines"),
    Topic("topic_gaps", "ticks.gaps", False, doc="trade-id gaps the producer found (and backfilled)"),
    Topic("topic_fee_predictions", "predictions.chain", False,
          doc="fee forecasts (base fee, fullness) and their retractions after a reorg, key chain id"),
    Topic("topic_alerts", "alerts", False,
          doc="transaction-value alerts (a value above its calibrated bound) and their retractions, key source"),
)
DEFAULTS: Mapping[str, str] = MappingProxyType({t.setting: t.default for t in TOPICS})


def by_field(setting: str) -> Topic:
    return next(t for t in TOPICS if t.setting == setting)


def name_of(settings: Settings, topic: Topic) -> str:
    return getattr(settings, topic.setting)


def partitioned_topics(settings: Settings) -> list[str]:
    """Per-market topics spread over the workers by key."""
    return [name_of(settings, t) for t in TOPICS if t.per_market]


def single_partition_topics(settings: Settings) -> list[str]:
    """Ordered, low-volume streams: blocks and txs (one chain), model updates, dead letters, gaps."""
    return [name_of(settings, t) for t in TOPICS if not t.per_market]


def renamed(settings: Settings, suffix: str) -> dict[str, str]:
    """Settings updates giving every topic its own copy ``<name>.<suffix>`` (runs that must not meet)."""
    return {t.setting: f"{name_of(settings, t)}.{suffix}" for t in TOPICS}


async def ensure_topics(settings: Settings) -> None:
    """Create every missing topic of the registry with its partitions and config."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # lazily: Settings imports this module
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [NewTopic(name, settings.partitions if t.per_market else 1, 1, topic_configs=dict(t.config))
                  for t in TOPICS if (name := name_of(settings, t)) not in existing]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:  # a concurrent creator won; fine
                pass
            log.info("created topics %s", [t.name for t in wanted])
    finally:
        await admin.close()

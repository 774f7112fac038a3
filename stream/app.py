"""The Faust app of one stream worker: topics, tables and agents, declared once.

``create_app(settings)`` builds it from the settings (no module-level app, so
tests and workers choose their broker at run time) into the shared context
(``stream.context.Streams``) that the agents import downward; ``run_worker`` runs a worker.
Topics carry raw bytes: the agents decode them with the records of
``stream.records`` so that anything malformed reaches the dead-letter topic
with a reason instead of stopping a worker.
"""

from __future__ import annotations

import asyncio
import logging

import faust
from aiokafka.errors import KafkaError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from chaincast.stream import kafka_options
from chaincast.stream.chain import watch_chain
from chaincast.stream.chainfeatures import ChainMinutes
from chaincast.stream.context import Streams
from chaincast.stream.health import HEALTH, broker_reachable
from chaincast.stream.model_slot import ModelSlots, watch_models
from chaincast.stream.settings import Settings
from chaincast.stream.sink import RedisSink
from chaincast.stream.topics import ensure_topics

log = logging.getLogger(__name__)


def faust_app(settings: Settings) -> faust.App:
    return kafka_options.faust_app(settings, store="memory://", autodiscover=False, web_enabled=False,
                                   logging_config=None)


def create_app(settings: Settings) -> Streams:
    from chaincast.stream.agents import fees, markets, score, txs  # the agents register themselves on this app
    from chaincast.stream import heap, lag, pauses

    pauses.measure()
    app = faust_app(settings)

    def topic(name: str, partitions: int | None = None) -> faust.TopicT:
        return app.topic(name, key_serializer="raw", value_serializer="raw", partitions=partitions)

    streams = Streams(
        settings=settings,
        app=app,
        trades=topic(settings.topic_trades, settings.partitions),
        bars=topic(settings.topic_bars, settings.partitions),
        predictions=topic(settings.topic_predictions, settings.partitions),
        deadletter=topic(settings.topic_deadletter, 1),
        # Written once per market per batch (stream.batches), so the key, not the current event, picks
        # the changelog partition: the market key's bytes, serialized raw, give its trades' partition
        # (the same murmur2 of the same bytes), and a worker recovers its markets' state with their
        # trades. (A str key is serialized as JSON, quotes and all, and lands elsewhere.)
        markets=app.Table("markets", partitions=settings.partitions, key_type=bytes, use_partitioner=True,
                          extra_topic_configs=kafka_options.topic_configs(settings)),
        windows=app.Table("windows", partitions=settings.partitions, key_type=bytes, use_partitioner=True,
                          extra_topic_configs=kafka_options.topic_configs(settings)),
        slots=ModelSlots.of(settings),  # one per forecaster of CHAINCAST_FORECASTS
        sink=RedisSink(settings.redis_url or "", settings.redis_prefix, settings.history_maxlen,
                       (settings.forecast_specs[0].target, settings.forecast_specs[0].horizon),
                       retry_budget_s=settings.redis_retry_budget_s),
        chain=ChainMinutes(),
        chain_ready=asyncio.Event(),
    )
    markets.register(streams)
    score.register(streams)
    fees.register(streams)  # fee forecasts from chain.blocks
    if settings.chain_txs:  # transactions are opt-in: so is their value forecaster
        txs.register(streams)
    lag.register(streams)  # consumer lag and model age, sampled on a timer

    # /livez and /readyz (stream.health): the loop's heartbeat, Redis and the broker.
    HEALTH.heartbeat_timeout_s = settings.heartbeat_timeout_s

    @app.task
    async def settle_collector() -> None:  # once the worker serves: full collections skip start-up's objects
        await streams.slots.ready.wait()
        pauses.settle()

    @app.timer(heap.TRIM_EVERY_S)
    async def trim_heap() -> None:  # a burst's freed memory back to the OS, not held in RSS for good
        await asyncio.to_thread(heap.trim)  # milliseconds of heap walking: off the event loop

    @app.task
    async def heartbeat() -> None:
        await HEALTH.heartbeat()

    @app.task
    async def redis_ready() -> None:
        await HEALTH.watch("redis", streams.sink.ping)

    @app.task
    async def broker_ready() -> None:
        await HEALTH.watch("broker", broker_reachable(settings.kafka_bootstrap_servers or ""))

    @app.task
    async def follow_chain() -> None:
        try:
            await watch_chain(settings, streams.chain, streams.chain_ready)
        except KafkaError as exc:  # bars go on without chain features rather than stall
            log.error("chain features off: following %s failed: %s", settings.topic_blocks, exc)
        finally:
            streams.chain_ready.set()

    @app.task
    async def follow_models() -> None:
        try:
            await watch_models(settings, streams.slots, on_swap=streams.sink.write_model,
                               on_refused=streams.model_refused)
        finally:  # cancelled at shutdown: the worker's one Redis client goes with it
            await streams.sink.close()

    return streams


async def wait_for_broker(settings: Settings) -> Settings:
    """Resolve the settings for this cluster and create the topics, waiting (jittered backoff, no limit) for the broker.

    A worker is a long-running service that may start before its broker, so an
    unreachable broker (``BrokerUnreachable``, or a ``KafkaError`` while creating the
    topics) is logged as ``broker unreachable ...`` and retried, never an exit: once
    the broker is up the worker consumes from the committed offsets and loses nothing.
    A broker that answers and refuses us (credentials, TLS, too few brokers for the
    replication factor, exactly_once on the embedded broker) is a KafkaSetupError that
    is not retried: the ``chaincast worker`` command prints it and exits 2. Interactive
    commands use ``deploy.preflight.kafka_ready`` instead, which exits 2 at once.
    """
    def unreachable(state: RetryCallState) -> None:
        log.warning("broker unreachable at %s (attempt %d): %s; retrying", settings.kafka_bootstrap_servers,
                    state.attempt_number, state.outcome.exception() if state.outcome else "")

    async for attempt in AsyncRetrying(retry=retry_if_exception_type((kafka_options.BrokerUnreachable, KafkaError)),
                                       wait=wait_random_exponential(multiplier=0.5, max=10), before_sleep=unreachable,
                                       reraise=True):
        with attempt:
            resolved = await kafka_options.resolve(settings)
            await ensure_topics(resolved)
    return resolved


class Worker(faust.Worker):
    """Faust's worker without its terminal spinner.

    For the spinner Faust sets the root logger to DEBUG and filters at its handler (faust 0.15.3,
    ``Worker._setup_spinner_handler``), so every debug call in aiokafka and Faust built a log
    record that was then dropped: 4 % of a busy worker's CPU (py-spy, the bench's 4-market scan).
    The root logger keeps ``CHAINCAST_LOG_LEVEL``.
    """

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None


def run_worker(settings: Settings) -> None:
    """Run one stream worker until SIGTERM/SIGINT (KafkaSetupError when the cluster refuses these settings)."""
    # A worker may start before the broker, or any producer: wait for it (see wait_for_broker).
    settings = asyncio.run(wait_for_broker(settings))
    streams = create_app(settings)
    worker = Worker(streams.app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()

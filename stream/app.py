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
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from faust.transport.drivers import aiokafka as faust_aiokafka

from chaincast.stream.chain import watch_chain
from chaincast.stream.chainfeatures import ChainMinutes
from chaincast.stream.context import Streams
from chaincast.stream.model_slot import ModelSlot, watch_models
from chaincast.stream.settings import Settings
from chaincast.stream.sink import RedisSink
from chaincast.stream.topics import ensure_topics

log = logging.getLogger(__name__)


# Kafka answers a fetch as soon as data arrives; Tansu only when the fetch's max wait
# expires, and Faust fixes that wait at 1.5 s, which would put 1.5 s on every hop.
EMBEDDED_FETCH_WAIT_MS = 10


class _PromptFetchThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = EMBEDDED_FETCH_WAIT_MS  # read when the consumer starts its fetcher
        return consumer


class _PromptFetchConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _PromptFetchThread:
        return _PromptFetchThread(self, loop=self.loop, beacon=self.beacon)


class _EmbeddedBrokerTransport(faust_aiokafka.Transport):
    Consumer = _PromptFetchConsumer


class EmbeddedBrokerApp(faust.App):
    """faust.App with a short consumer fetch wait, for the embedded broker only."""

    def _new_transport(self) -> faust_aiokafka.Transport:
        return _EmbeddedBrokerTransport(self.conf.broker_consumer, self)


def faust_app(settings: Settings) -> faust.App:
    embedded = settings.embedded_broker
    return (EmbeddedBrokerApp if embedded else faust.App)(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        processing_guarantee="at_least_once",
        producer_acks=-1,
        # Tansu: group joins take half the session timeout, and multi-record batches
        # break ListOffsets(LATEST) and so changelog recovery: one record per batch there.
        broker_session_timeout=10 if embedded else 30,
        producer_max_batch_size=1 if embedded else 16_384,
        producer_linger=0.0 if embedded else 0.005,
        producer_max_request_size=max(settings.max_message_bytes * 2, 1_048_576),
        consumer_auto_offset_reset="earliest",
        logging_config=None,
    )


def create_app(settings: Settings) -> Streams:
    from chaincast.stream.agents import bars, fees, predict, score, txs  # the agents register themselves on this app
    from chaincast.stream import lag

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
        # Both tables are written once per market per batch (stream.take): the key, not the
        # current event, picks the partition, which matches the input topic's because both
        # are keyed by market with the default partitioner.
        bar_state=app.Table("bar-state", partitions=settings.partitions, key_type=str, use_partitioner=True),
        windows=app.Table("windows", partitions=settings.partitions, key_type=str,
                          use_partitioner=True),
        slot=ModelSlot(settings.model_name, threads=settings.onnx_threads, window=settings.window),
        sink=RedisSink(settings.redis_url or "", settings.redis_prefix, settings.history_maxlen,
                       (settings.forecast_specs[0].target, settings.forecast_specs[0].horizon)),
        chain=ChainMinutes(),
        chain_ready=asyncio.Event(),
    )
    bars.register(streams)
    predict.register(streams)
    score.register(streams)
    fees.register(streams)  # fee forecasts from chain.blocks
    if settings.chain_txs:  # transactions are opt-in: so is their value forecaster
        txs.register(streams)
    lag.register(streams)  # consumer lag and model age, sampled on a timer

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
            await watch_models(settings, streams.slot, on_swap=streams.sink.write_model)
        finally:  # cancelled at shutdown: the worker's one Redis client goes with it
            await streams.sink.close()

    return streams


def run_worker(settings: Settings) -> None:
    """Run one stream worker until SIGTERM/SIGINT."""
    asyncio.run(ensure_topics(settings))  # a worker may start before any producer
    streams = create_app(settings)
    worker = faust.Worker(streams.app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()

"""Every Kafka client's options, from the settings, in one place: aiokafka producers, consumers, the admin client and the Faust app.

Two broker profiles:

- **Apache Kafka** (production): idempotent producer with ``acks=all``, normal
  batching (``linger_ms`` 5), Kafka's fetch wait, 30 s group sessions,
  replicated topics with ``min.insync.replicas``, TLS and SASL when configured.
- **The embedded broker** (Tansu 0.6.0, ``CHAINCAST_EMBEDDED_BROKER=1``), whose
  measured quirks need workarounds: no idempotent producer or transactions;
  ``ListOffsets(LATEST)`` is wrong when a batch holds several records (Faust's
  changelog recovery then loses updates), so one record per batch; a group join
  takes half the session timeout, so 10 s sessions; and a fetch is answered only
  when its wait expires, and is cut off at that deadline while Tansu scans the
  partition, so the wait must be short for latency and long enough to scan.

No other module passes broker-specific options to a Kafka client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import faust
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.helpers import create_ssl_context
from faust.transport.drivers import aiokafka as faust_aiokafka

if TYPE_CHECKING:  # settings -> topics -> here: only the type is needed
    from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)

# Tansu answers a fetch only when its max wait expires (Kafka answers as soon as data arrives),
# so this wait is added to every hop; but Tansu (0.6.0, memory storage) also lists every record
# of each fetched partition on every fetch, twice, and answers at the deadline with what it has
# scanned by then: partitions scanned after it come back empty (measured: one 40k-record
# partition, nothing at 10 ms, everything at 100 ms; see deploy/BENCHMARKS.md). So on the
# embedded broker the worker's wait starts short and grows with the records of the partitions it
# fetches (``embedded_fetch_wait_ms``, applied by the lag sampler every few seconds).
EMBEDDED_FETCH_WAIT_MS = 10
EMBEDDED_SCAN_US_PER_RECORD = 5  # measured ~1.1 us per record per listing, two listings per fetch: x2 margin
EMBEDDED_FETCH_WAIT_MAX_MS = 10_000
KAFKA_FETCH_WAIT_MS = 500  # aiokafka's and Kafka's default
KAFKA_LINGER_MS = 5  # a busy feed batches its sends; CHAINCAST_KAFKA_LINGER_MS=0 for the lowest latency
EMBEDDED_SESSION_TIMEOUT_MS = 10_000  # Tansu completes a join only after half the session timeout
SESSION_TIMEOUT_MS = 30_000


class KafkaSetupError(RuntimeError):
    """The cluster cannot serve these settings (unreachable, refused credentials, too few brokers): exit 2."""


class BrokerUnreachable(KafkaSetupError):
    """No broker answered (connection refused or timed out), as opposed to one that answered and refused us.

    Interactive commands treat it like any KafkaSetupError (one line, exit 2); the stream
    worker instead waits for the broker with backoff (``stream.app.wait_for_broker``), since
    it may be started before the broker, like any long-running service.
    """


# --- plain aiokafka clients ----------------------------------------------------------------------------


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL / SASL_SSL (CA file, optional client certificate), else None."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    password = settings.kafka_ssl_key_password
    try:
        return create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            password=password.get_secret_value() if password else None,
        )
    except (OSError, ssl.SSLError) as exc:
        raise KafkaSetupError(f"TLS files refused: {exc.__class__.__name__}: {exc}") from None


def connection(settings: Settings) -> dict[str, Any]:
    """Bootstrap servers and security: what every client needs."""
    opts: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if (context := ssl_context(settings)) is not None:
        opts["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        opts.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=settings.kafka_sasl_username,
                    sasl_plain_password=password.get_secret_value() if password else None)
    return opts


def max_request_bytes(settings: Settings) -> int:
    """Room for the largest message we accept (larger ones are dead-lettered), and a TradeBatch of them."""
    return max(settings.max_message_bytes * 2, 1_048_576)


def producer(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """AIOKafkaProducer kwargs: acks=all always; idempotent and batching on Kafka, one record per batch on Tansu."""
    opts = {**connection(settings), "acks": "all", "max_request_size": max_request_bytes(settings)}
    if settings.embedded_broker:
        opts.update(enable_idempotence=False, max_batch_size=1, linger_ms=0)
    else:
        opts.update(enable_idempotence=True, linger_ms=linger_ms(settings))
    return {**opts, **overrides}


def linger_ms(settings: Settings) -> int:
    """How long a Kafka producer waits to fill a batch (CHAINCAST_KAFKA_LINGER_MS, default 5 ms)."""
    return KAFKA_LINGER_MS if settings.kafka_linger_ms is None else settings.kafka_linger_ms


def fetch_max_wait_ms(settings: Settings) -> int:
    """The stream worker's fetch wait: on Tansu every hop of the pipeline pays it."""
    if settings.kafka_fetch_max_wait_ms is not None:
        return settings.kafka_fetch_max_wait_ms
    return EMBEDDED_FETCH_WAIT_MS if settings.embedded_broker else KAFKA_FETCH_WAIT_MS


def embedded_fetch_wait_ms(records: int) -> int:
    """The fetch wait that lets the embedded broker scan ``records`` (the total of the partitions
    one fetch asks for) before its deadline, within [EMBEDDED_FETCH_WAIT_MS, EMBEDDED_FETCH_WAIT_MAX_MS].

    >>> embedded_fetch_wait_ms(0), embedded_fetch_wait_ms(11_000), embedded_fetch_wait_ms(200_000)
    (10, 65, 1010)
    >>> embedded_fetch_wait_ms(10**8)
    10000
    """
    wait = EMBEDDED_FETCH_WAIT_MS + records * EMBEDDED_SCAN_US_PER_RECORD // 1000
    return min(wait, EMBEDDED_FETCH_WAIT_MAX_MS)


def adaptive_fetch_wait(settings: Settings) -> bool:
    """Whether the worker's fetch wait follows the partitions' size: on the embedded broker, unless set."""
    return settings.embedded_broker and settings.kafka_fetch_max_wait_ms is None


def session_timeout_ms(settings: Settings) -> int:
    return EMBEDDED_SESSION_TIMEOUT_MS if settings.embedded_broker else SESSION_TIMEOUT_MS


def restart_delay_s(settings: Settings) -> float:
    """How long a supervisor waits before restarting a worker that ended without leaving its group
    (SIGKILL, or exit 75 before a batch was acknowledged).

    Apache Kafka rebalances when the dead member's session ends, so a restarted worker gets its
    partitions either way: no wait. The embedded broker can assign a member that joins while its
    dead predecessor is still in the group only the changelogs, and never hands it the rest
    (measured: a worker restarted at once after exit 75 never read chain.blocks again): wait out
    the dead member's session.

    >>> from chaincast.stream.settings import Settings
    >>> restart_delay_s(Settings(CHAINCAST_EMBEDDED_BROKER="1")), restart_delay_s(Settings(KAFKA_BOOTSTRAP_SERVERS="k:9092"))
    (11.0, 0.0)
    """
    return EMBEDDED_SESSION_TIMEOUT_MS / 1000 + 1 if settings.embedded_broker else 0.0


def consumer(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """AIOKafkaConsumer kwargs (pass group_id, offsets policy etc. as overrides)."""
    # Kafka's wait for the side consumers (models, chain, retrainer, tail): none of them is on
    # the latency path, and a long wait never starves a Tansu scan.
    opts = {**connection(settings), "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms or KAFKA_FETCH_WAIT_MS,
            "session_timeout_ms": session_timeout_ms(settings), "heartbeat_interval_ms": 3_000}
    return {**opts, **overrides}


def admin(settings: Settings, **overrides: Any) -> dict[str, Any]:
    return {**connection(settings), **overrides}


async def partitions_for(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partitions of ``topic`` for a consumer without a subscription (empty while it does not exist).

    ``consumer.topics()`` fetches metadata without keeping it, and the consumer's own refresh
    names no topic when nothing is subscribed: Tansu answers that with every topic, Kafka
    with none (measured). So name the topic in the client's metadata requests.
    """
    await consumer._client.add_topic(topic)  # noqa: SLF001 - aiokafka has no public way to track a topic
    return consumer.partitions_for_topic(topic) or set()


# --- topics --------------------------------------------------------------------------------------------


def replication_factor(settings: Settings) -> int:
    """The resolved factor (see :func:`resolve`); 1 if it was never resolved."""
    return settings.replication_factor or 1


def topic_configs(settings: Settings) -> dict[str, str]:
    """Configs every chaincast topic (and changelog) is created with."""
    rf = replication_factor(settings)
    if rf <= 1:
        return {}
    return {"min.insync.replicas": str(settings.min_insync_replicas or max(1, rf - 1))}


# --- the Faust app -------------------------------------------------------------------------------------


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Faust fixes the fetch wait at 1.5 s; the consumer reads it when it starts its fetcher.
        consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms
        self.app.fetch_consumer = consumer
        return consumer

    async def _fetch_records(self, consumer: AIOKafkaConsumer, active_partitions: set[Any],
                             timeout: float | None = None, max_records: int | None = None) -> Any:
        # Faust passes its live set of active partitions, and aiokafka reads an empty set as "every
        # partition". Once the recovery has read the changelogs the set can empty while a fetch waits:
        # aiokafka then returned records of partitions held for the seek, Faust dropped them (not
        # active) and the consumer's position had moved past them (measured: a worker restarted after
        # exit 75 never read chain.blocks 30-59 again). A snapshot, and nothing fetched for none.
        partitions = set(active_partitions) if active_partitions is not None else None
        if partitions is not None and not partitions:
            return {}
        return await super()._fetch_records(consumer, partitions, timeout=timeout, max_records=max_records)


class _Consumer(faust_aiokafka.Consumer):
    """Faust's consumer, except that a rebalance's stream partitions are resumed only once seeked.

    Faust's recovery (``faust.tables.recovery.Recovery.on_recovery_completed``) resumes the
    stream partitions a rebalance assigned and only then seeks them to their committed offsets.
    A batch fetched in between is still being delivered when the seek rewinds the consumer's read
    offsets: Faust takes the next record of that batch for a gap past the rewound offset and
    counts the offsets it "skipped" as acknowledged, and the records fetched again from the
    committed offset are then dropped as already read. Measured with Faust's own bookkeeping
    logged: after one of two workers was SIGKILLed, the survivor lost trades 642-1439 of a
    partition it had owned all along, and bars and predictions its other agents consume (on the
    embedded broker and on Apache Kafka alike). Holding the stream partitions back until the seek
    has run makes the first batch after a rebalance start at the committed offset, or at the
    beginning where nothing is committed yet.
    """

    _holding: bool = False  # from a revocation until the next assignment's partitions are seeked
    _assigned: bool = False  # that assignment has arrived
    _held: set[Any] = set()  # noqa: RUF012 - replaced per instance on every revocation

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        # From here until the next assignment's seek nothing resumes a stream partition. Faust
        # resumes a partition whose stream buffer was full once the buffer drains
        # (``on_buffer_drop``), and that mark outlives a revocation: measured, it resumed a trades
        # partition before the seek and 16 bars were lost.
        self._holding, self._assigned, self._held = True, False, set()
        self._buffered_partitions.difference_update(revoked)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[Any], generation_id: int = 0) -> None:
        self._holding, self._assigned = True, True
        await super().on_partitions_assigned(assigned, generation_id)

    def resume_partitions(self, tps: Iterable[Any]) -> None:
        tps = set(tps)
        if self._holding:  # changelogs are read by the recovery itself, from their own offsets
            held = {tp for tp in tps if not self._is_changelog_tp(tp)}
            self._held |= held
            tps -= held
        super().resume_partitions(tps)

    def on_buffer_drop(self, tp: Any) -> None:
        if self._holding and not self._is_changelog_tp(tp):
            self._buffered_partitions.discard(tp)  # the recovery resumes it, once seeked
            return
        super().on_buffer_drop(tp)

    async def perform_seek(self) -> None:
        await super().perform_seek()
        # The seek that follows the recovery's resume: not one during the revocation, nor Faust's
        # own seek when it finds the flow stopped (``Consumer.getmany``), which can come first
        # (measured: released nothing, then the recovery resumed unheld and 49 bars were lost).
        if self._holding and self._assigned and self._held:
            held, self._holding, self._held = self._held, False, set()
            # Faust's seek leaves a partition with nothing committed where the fetcher is, which
            # records Faust fetched and then dropped at the pause may have moved (measured: a worker
            # restarted after a SIGKILL began a never-committed trades partition at 798, not 0).
            # Offset 0 is the beginning; past a retention cut the consumer resets to the earliest.
            uncommitted = {tp: 0 for tp in held if not self._committed_offset.get(tp)}
            if uncommitted:
                await self.seek_wait(uncommitted)
            super().resume_partitions(held)


class _Producer(faust_aiokafka.Producer):
    def _settings_extra(self) -> dict[str, Any]:
        # Faust asks for idempotence only inside transactions; on Kafka every producer gets it.
        extra = dict(super()._settings_extra())
        if self.app.idempotent:
            extra.update(acks="all", enable_idempotence=True)
        return extra


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer
    Producer = _Producer


class TunedApp(faust.App):
    """faust.App whose consumers use our fetch wait and whose producers are idempotent on Kafka."""

    fetch_max_wait_ms: int = 1500
    idempotent: bool = False
    fetch_consumer: AIOKafkaConsumer | None = None  # the worker's aiokafka consumer, once Faust made it

    def set_fetch_wait(self, ms: int) -> None:
        """Change the worker consumer's fetch wait from the next fetch on (the embedded broker's
        adaptive wait). aiokafka reads it from its fetcher for every request it builds; the
        fetcher runs on Faust's consumer thread, and an int attribute is swapped atomically."""
        self.fetch_max_wait_ms = ms
        if self.fetch_consumer is not None:
            self.fetch_consumer._fetch_max_wait_ms = ms  # noqa: SLF001 - no public setter in aiokafka
            if (fetcher := getattr(self.fetch_consumer, "_fetcher", None)) is not None:
                fetcher._fetch_max_wait_ms = ms  # noqa: SLF001

    def _new_transport(self) -> faust_aiokafka.Transport:
        return _Transport(self.conf.broker_consumer, self)

    async def _on_partitions_assigned(self, assigned: Any, generation_id: int = 0) -> None:
        # Faust picks a changelog record's partition from the producer's metadata, which on
        # Kafka names only the topics this producer asked about (Tansu lists every topic):
        # without this a table write crashes its agent with partitions_for_topic() -> None.
        client = self.producer._ensure_producer().client  # noqa: SLF001
        for topic in self.tables.changelog_topics:
            await client.add_topic(topic)
            if client.cluster.partitions_for_topic(topic) is None:
                # add_topic may have joined a metadata request already in flight, which
                # did not name this topic: ask once more, now that it is tracked.
                await client.force_metadata_update()
        await super()._on_partitions_assigned(assigned, generation_id)


def faust_credentials(settings: Settings) -> dict[str, Any]:
    context = ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        return {"broker_credentials": faust.SASLCredentials(
            username=settings.kafka_sasl_username, password=password.get_secret_value() if password else None,
            ssl_context=context, mechanism=settings.kafka_sasl_mechanism)}
    if context is not None:
        return {"broker_credentials": faust.SSLCredentials(context)}
    return {}


def faust_app(settings: Settings, **options: Any) -> faust.App:
    """The Faust app with the broker profile applied; ``options`` are the app's own (store, web, ...)."""
    embedded = settings.embedded_broker
    app = TunedApp(
        settings.app_id,
        broker=[f"kafka://{server}" for server in (settings.kafka_bootstrap_servers or "").split(",")],
        topic_partitions=settings.partitions,
        topic_replication_factor=replication_factor(settings),
        processing_guarantee=settings.processing_guarantee,
        producer_acks=-1,
        broker_session_timeout=session_timeout_ms(settings) / 1000,
        # One record per batch on Tansu: multi-record batches break ListOffsets(LATEST) and so
        # changelog recovery there.
        producer_max_batch_size=1 if embedded else 16_384,
        producer_linger=0.0 if embedded else linger_ms(settings) / 1000,
        producer_max_request_size=max_request_bytes(settings),
        consumer_auto_offset_reset="earliest",
        **faust_credentials(settings),
        **options,
    )
    app.fetch_max_wait_ms = fetch_max_wait_ms(settings)
    app.idempotent = not embedded
    return app


# --- start-up checks -----------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    name = exc.__class__.__name__
    text = (str(exc).strip().splitlines() or [""])[0]
    return text if text.startswith(name) else f"{name}: {text}".rstrip(": ")


@contextlib.contextmanager
def _quiet_clients() -> Iterator[None]:
    """The probe's failure is reported as one line; aiokafka's own error logs would repeat it."""
    logger = logging.getLogger("aiokafka")
    before = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(before)


async def brokers(settings: Settings, timeout_s: float = 20.0) -> int:
    """How many brokers the cluster has; KafkaSetupError when it cannot be reached or refuses us."""
    client = AIOKafkaAdminClient(**admin(settings, request_timeout_ms=int(timeout_s * 1000)))
    with _quiet_clients():
        return await _count_brokers(client, settings, timeout_s)


async def _count_brokers(client: AIOKafkaAdminClient, settings: Settings, timeout_s: float) -> int:
    try:
        await asyncio.wait_for(client.start(), timeout_s)
        return len((await asyncio.wait_for(client.describe_cluster(), timeout_s))["brokers"])
    except asyncio.TimeoutError:
        raise BrokerUnreachable(f"Kafka at {settings.kafka_bootstrap_servers} did not answer within "
                                f"{timeout_s:.0f}s ({settings.kafka_security_protocol})") from None
    except ssl.SSLError as exc:  # an OSError too, but the broker answered: refused TLS is not "unreachable"
        raise KafkaSetupError(f"cannot use Kafka at {settings.kafka_bootstrap_servers} "
                              f"({settings.kafka_security_protocol}): {_one_line(exc)}") from None
    except (KafkaConnectionError, OSError) as exc:
        raise BrokerUnreachable(f"cannot use Kafka at {settings.kafka_bootstrap_servers} "
                                f"({settings.kafka_security_protocol}): {_one_line(exc)}") from None
    except KafkaError as exc:
        raise KafkaSetupError(f"cannot use Kafka at {settings.kafka_bootstrap_servers} "
                              f"({settings.kafka_security_protocol}): {_one_line(exc)}") from None
    finally:
        await client.close()


async def resolve(settings: Settings) -> Settings:
    """Settings with the replication factor fixed for this cluster; KafkaSetupError when it cannot serve them.

    Default factor: 3 when the cluster has three or more brokers, else 1. Asking
    for more replicas than there are brokers is refused here, before any topic exists.
    """
    if settings.embedded_broker and settings.processing_guarantee == "exactly_once":
        raise KafkaSetupError("exactly_once needs Kafka transactions, which the embedded broker refuses")
    n = await brokers(settings)
    rf = settings.replication_factor or (3 if n >= 3 else 1)
    if rf > n:
        raise KafkaSetupError(f"CHAINCAST_REPLICATION_FACTOR={rf} but the cluster has {n} broker(s)")
    min_isr = settings.min_insync_replicas or max(1, rf - 1)
    if min_isr > rf:
        raise KafkaSetupError(f"CHAINCAST_MIN_INSYNC_REPLICAS={min_isr} is above the replication factor {rf}")
    return settings.model_copy(update={"replication_factor": rf, "min_insync_replicas": min_isr})

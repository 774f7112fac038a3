"""Apache Kafka (KRaft) on loopback, from the jars ``pom.xml`` resolves into ``lib/``: the reference broker.

``kafka_cluster(workdir, nodes=1)`` formats storage, starts one node or a
cluster (each node both broker and controller, so three nodes survive losing
one), waits until every broker is registered, and stops them on exit. No
Docker, no distribution tarball: ``java -cp 'lib/*' kafka.Kafka server.properties``.

Each node has three listeners on free ports: ``CLIENT`` (what clients are given;
PLAINTEXT, or SASL_SSL when a :class:`SaslSsl` is passed), ``INTERNAL``
(PLAINTEXT, broker to broker, and how this helper probes readiness) and
``CONTROLLER``. Heaps are small (the machine is shared): a test broker needs far
less than Kafka's 1 GB default.

Install the jars once: ``bash deploy/install-test-deps.sh`` (or
``mvn -q -f deploy/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory=lib``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from chaincast.deploy.embedded import EmbeddedError, Process, free_port, wait_for_port

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
LIB = HERE / "lib"
DEFAULT_HEAP_MB = 320
# Small JVM: serial GC and C1 only start faster and use fewer threads on a shared 2-core machine.
JVM_FLAGS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xss512k", "-Djava.awt.headless=true")
LOG4J2 = """\
Configuration:
  status: warn
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: {level}
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
"""


class KafkaNotInstalled(EmbeddedError):
    """The broker jars are missing: run deploy/install-test-deps.sh."""


@dataclass(frozen=True)
class SaslSsl:
    """A SASL_SSL client listener: SCRAM (and PLAIN) users, a PEM key+certificate the broker presents."""

    username: str
    password: str = field(repr=False)
    server_pem: Path  # PKCS#8 private key + certificate chain, unencrypted
    mechanisms: tuple[str, ...] = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")


@dataclass
class KafkaNode:
    node_id: int
    client_port: int
    internal_port: int
    controller_port: int
    config: Path
    process: Process | None = None

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()


def java() -> str:
    found = shutil.which("java")
    if not found:
        raise KafkaNotInstalled("no java on PATH (Java 17+ runs the Kafka broker)")
    return found


def classpath(lib: Path = LIB) -> str:
    if not any(lib.glob("kafka_2.13-*.jar")):
        raise KafkaNotInstalled(f"no Kafka jars in {lib}: run `bash deploy/install-test-deps.sh`")
    return f"{lib}/*"


def cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what StorageTool random-uuid prints).

    Never one that starts with "-": the storage tool would read it as an option and refuse to
    format (Kafka's own Uuid.randomUuid redraws those too).

    >>> all(not cluster_id().startswith("-") for _ in range(1000))
    True
    """
    while (cid := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
        pass
    return cid


class KafkaCluster:
    """One or more KRaft nodes (combined broker + controller) on loopback; see the module docstring."""

    def __init__(self, workdir: Path, nodes: int = 1, *, security: SaslSsl | None = None,
                 heap_mb: int = DEFAULT_HEAP_MB, lib: Path = LIB, log_level: str = "WARN") -> None:
        self.workdir = workdir
        self.security = security
        self.heap_mb = heap_mb
        self.lib = lib
        self.log_level = log_level
        self.nodes = [KafkaNode(i, free_port(), free_port(), free_port(), workdir / f"node{i}" / "server.properties")
                      for i in range(1, nodes + 1)]

    @property
    def bootstrap(self) -> str:
        """What clients connect to (the CLIENT listeners)."""
        return ",".join(f"127.0.0.1:{n.client_port}" for n in self.nodes)

    @property
    def internal_bootstrap(self) -> str:
        """PLAINTEXT listeners, for tooling that must not need the client credentials."""
        return ",".join(f"127.0.0.1:{n.internal_port}" for n in self.nodes)

    @property
    def client_protocol(self) -> str:
        return "SASL_SSL" if self.security else "PLAINTEXT"

    def node(self, node_id: int) -> KafkaNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> "KafkaCluster":
        cid = cluster_id()
        (self.workdir / "log4j2.yaml").parent.mkdir(parents=True, exist_ok=True)
        (self.workdir / "log4j2.yaml").write_text(LOG4J2.format(level=self.log_level))
        for node in self.nodes:
            node.config.parent.mkdir(parents=True, exist_ok=True)
            node.config.write_text(self._properties(node))
            self._format(node, cid)
        for node in self.nodes:
            self._launch(node)
        try:
            for node in self.nodes:
                wait_for_port(node.client_port, node.process.popen, timeout, f"kafka node {node.node_id}")
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every node (a controlled shutdown), SIGKILL after ``timeout``."""
        for node in self.nodes:
            if node.process is not None and node.process.popen is not None and node.process.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.popen.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.process is not None:
                node.process.stop(timeout)

    def kill(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would."""
        node = self.node(node_id)
        if node.process is not None:
            node.process.kill()

    def restart(self, node_id: int, timeout: float = 180.0) -> None:
        node = self.node(node_id)
        self._launch(node)
        wait_for_port(node.client_port, node.process.popen, timeout, f"kafka node {node_id}")
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until every live node is registered as a broker (a client may then create topics with full
        replication) and a group coordinator answers."""
        want = {n.node_id for n in self.nodes if n.alive()}
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process is not None and not node.alive():
                    if node.node_id in want:
                        raise EmbeddedError(f"kafka node {node.node_id} exited with code "
                                            f"{node.process.popen.returncode}; see {self._log(node)}")
            try:
                if set(asyncio.run(self._broker_ids())) >= want:
                    return
            except Exception as exc:  # noqa: BLE001 - not ready yet: any client error means "again"
                last = exc
            time.sleep(0.5)
        raise EmbeddedError(f"kafka did not register brokers {sorted(want)} within {timeout:.0f}s ({last})")

    def leader_of(self, topic: str, partition: int) -> int:
        """The node id leading ``topic``/``partition`` now (-1: none), as the live nodes see it."""
        return asyncio.run(self._leader(topic, partition))

    # --- internals -----------------------------------------------------------------------------------

    async def _admin(self):
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.internal_bootstrap, request_timeout_ms=5000)
        await admin.start()
        return admin

    async def _broker_ids(self) -> list[int]:
        admin = await self._admin()
        try:
            ids = [b["node_id"] for b in (await admin.describe_cluster())["brokers"]]
            # Serving = a group coordinator answers too: the first FindCoordinator creates
            # __consumer_offsets, and a Faust worker whose first join races that load was
            # seen to stay unassigned (aiokafka marks the coordinator dead and never rejoins).
            await admin.find_coordinator("chaincast-ready")
            return ids
        finally:
            await admin.close()

    async def _leader(self, topic: str, partition: int) -> int:
        # Not the admin client: its describe_topics() asks a random broker of the metadata, which
        # still names a SIGKILLed node until the controller fences it (NodeNotReadyError). A
        # metadata fetch over the live nodes tries them in turn and skips an unreachable one.
        from aiokafka.client import AIOKafkaClient
        from aiokafka.structs import TopicPartition

        live = ",".join(f"127.0.0.1:{n.internal_port}" for n in self.nodes if n.alive())
        client = AIOKafkaClient(bootstrap_servers=live, request_timeout_ms=5000)
        try:
            await client.bootstrap()
            leader = (await client.fetch_all_metadata()).leader_for_partition(TopicPartition(topic, partition))
        finally:
            await client.close()
        if leader is None:
            raise KeyError(f"{topic}/{partition} is not in the cluster metadata")
        return leader  # -1 while the partition has no leader

    def _log(self, node: KafkaNode) -> Path:
        return node.config.parent / "kafka.log"

    def _properties(self, node: KafkaNode) -> str:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        replicas = min(3, len(self.nodes))
        client = self.client_protocol
        lines = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"CLIENT://127.0.0.1:{node.client_port},INTERNAL://127.0.0.1:{node.internal_port},"
                         f"CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"CLIENT://127.0.0.1:{node.client_port},"
                                    f"INTERNAL://127.0.0.1:{node.internal_port}",
            "listener.security.protocol.map": f"CLIENT:{client},INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "INTERNAL",
            "log.dirs": node.config.parent / "data",
            "num.partitions": 1,
            "default.replication.factor": replicas,
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": 4,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min(2, replicas),
            "transaction.state.log.num.partitions": 4,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min(2, replicas),
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "true",
            # Fewer threads than Kafka's defaults: a test broker on a shared 2-core machine.
            "num.network.threads": 2,
            "num.io.threads": 2,
            "background.threads": 2,
            "num.recovery.threads.per.data.dir": 1,
            "log.cleaner.threads": 1,
            "log.cleaner.dedupe.buffer.size": 8 * 1024 * 1024,
        }
        if self.security:
            lines.update({
                "sasl.enabled.mechanisms": ",".join(self.security.mechanisms),
                "listener.name.client.ssl.keystore.type": "PEM",
                "listener.name.client.ssl.keystore.location": self.security.server_pem,
            })
            for mech in self.security.mechanisms:
                key = f"listener.name.client.{mech.lower()}.sasl.jaas.config"
                if mech == "PLAIN":
                    user = f'user_{self.security.username}="{self.security.password}"'
                    lines[key] = f"org.apache.kafka.common.security.plain.PlainLoginModule required {user};"
                else:
                    lines[key] = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    def _format(self, node: KafkaNode, cid: str) -> None:
        argv = [java(), f"-Xmx{min(self.heap_mb, 256)}m", *JVM_FLAGS, "-cp", classpath(self.lib),
                f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.yaml'}",
                "kafka.tools.StorageTool", "format", "-t", cid, "-c", str(node.config), "--ignore-formatted"]
        if self.security:
            for mech in self.security.mechanisms:
                if mech.startswith("SCRAM"):
                    argv += ["--add-scram", f"{mech}=[name={self.security.username},"
                                            f"password={self.security.password}]"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise EmbeddedError(f"formatting kafka node {node.node_id} failed: "
                                f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")

    def _launch(self, node: KafkaNode) -> None:
        argv = [java(), f"-Xmx{self.heap_mb}m", f"-Xms{min(64, self.heap_mb)}m", *JVM_FLAGS,
                f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.yaml'}",
                "-cp", classpath(self.lib), "kafka.Kafka", str(node.config)]
        node.process = Process(f"kafka-{node.node_id}", argv, log_path=self._log(node)).start()
        log.info("kafka node %d: client 127.0.0.1:%d (pid %d)", node.node_id, node.client_port, node.process.pid)


@contextlib.contextmanager
def kafka_cluster(workdir: Path, nodes: int = 1, **options) -> Iterator[KafkaCluster]:
    """Start ``nodes`` KRaft nodes under ``workdir``; yield the running cluster; stop it."""
    cluster = KafkaCluster(workdir, nodes, **options)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()

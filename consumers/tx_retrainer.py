"""The transaction-value retrainer: ``chain.txs`` -> challenger -> (maybe) a new ``tx_value`` champion.

Like the market retrainer: it keeps a bounded history (here of transactions,
rebuilt from the start of the topic on every start; reorg retractions on
``chain.blocks`` remove the orphaned block's transactions), and every
``CHAINCAST_TX_RETRAIN_EVERY`` new transactions runs a round in a worker
process (``tx_challenge``: pure, plain rows in, bytes and dicts out). The round
builds a challenger with ``models.tx_build`` (the encoder, or the reference
median when the encoder does not beat it on validation), scores it and the
champion (through its ONNX file, as served) on the newest slice neither trained
on, and promotes only when the challenger's MAE is lower by the margin. Only
then does the retrainer write the registry, move the champion pointer and
announce the update on ``models.updates``; the txs agents hot-swap it. A
registry write that fails (a full disk, a quota, a read-only mount) is logged,
counted as a ``registry_write_failed`` refusal, and the round runs again after a
backoff (``CHAINCAST_REGISTRY_RETRY_S``, doubling) while the old champion serves.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from chaincast.consumers.promotion import announce
from chaincast.consumers.registry import ModelEntry, Registry, WriteBackoff
from chaincast.stream.metrics import PROMOTIONS, REFUSALS, RETRAIN_RUNS
from chaincast.stream.records import Block, Tx
from chaincast.stream import kafka_options
from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TxChallengeJob:
    rows: list[dict[str, Any]]  # models.txs.record_row dicts, chain order
    name: str
    window: int
    epochs: int
    margin: float
    champion_path: str | None = None
    champion_sha256: str | None = None
    seed: int = 0


@dataclass
class TxChallengeResult:
    promote: bool
    reason: str
    challenger_mae: float
    champion_mae: float | None
    onnx_bytes: bytes = b""
    card: dict[str, Any] = field(default_factory=dict)


def champion_mae(path: str, sha256: str | None, table: Any, rows: np.ndarray) -> float:
    """MAE of the served champion on ``rows`` of ``table``, through its ONNX file and its own vocabulary."""
    from chaincast.models.tx_build import masked_inputs
    from chaincast.models.tx_serving import TxForecaster
    from chaincast.models.txs import num_features, target, token_ids, windows

    champ = TxForecaster.load(path, expected_sha256=sha256)
    rows = rows[rows >= champ.window - 1]
    y = target(table.value_eth).astype(np.float32)
    ids, num = token_ids(table, champ.vocab), num_features(table)
    inputs = masked_inputs(windows(ids, rows, champ.window), windows(num, rows, champ.window),
                           windows(y, rows, champ.window))
    q = champ.run(*inputs)
    return float(np.mean(np.abs(y[rows] - q[:, 1])))


def tx_challenge(job: TxChallengeJob) -> TxChallengeResult:
    """One round: build a challenger on the rows, score it and the champion on the newest slice, decide."""
    import torch

    from chaincast.models.export import ExportError
    from chaincast.models.serving import ModelRejected
    from chaincast.models.tx_build import build_tx_model, export_tx_checked, split_rows
    from chaincast.models.tx_encoder import TxFit
    from chaincast.models.txs import TxTable

    torch.set_num_threads(1)
    table = TxTable.from_rows(job.rows)
    build = build_tx_model(table, job.window, TxFit(epochs=job.epochs, seed=job.seed), name=job.name)
    mae = float(build.card["metrics"]["test"]["mae"])  # the newest rows: the challenger never trained on them
    try:
        onnx_bytes, card = export_tx_checked(build)
    except ExportError as exc:
        return TxChallengeResult(False, f"export: {exc}", mae, None)
    if job.champion_path is None:
        return TxChallengeResult(True, "first model", mae, None, onnx_bytes, card)
    _, _, test = split_rows(len(table), job.window)
    try:
        champ = champion_mae(job.champion_path, job.champion_sha256, table, test)
    except ModelRejected as exc:  # the champion cannot even be scored: replace it
        return TxChallengeResult(True, f"champion unusable: {exc}", mae, None, onnx_bytes, card)
    if mae < champ * (1 - job.margin):
        return TxChallengeResult(True, "beats the champion", mae, champ, onnx_bytes, card)
    return TxChallengeResult(False, "does not beat the champion", mae, champ)


class TxHistory:
    """The newest ``size`` transactions, by block hash so a reorg can remove a block's."""

    def __init__(self, size: int) -> None:
        self.rows: deque[dict[str, Any]] = deque(maxlen=size)
        self.new = 0

    def add(self, tx: Tx) -> None:
        from chaincast.models.txs import record_row

        self.rows.append(record_row(tx))
        self.new += 1

    def retract(self, block_hash: str) -> int:
        kept = [r for r in self.rows if r["block_hash"] != block_hash]
        dropped = len(self.rows) - len(kept)
        self.rows = deque(kept, maxlen=self.rows.maxlen)
        return dropped


class TxRetrainer:
    def __init__(self, settings: Settings, registry: Registry | None = None, pool: Executor | None = None) -> None:
        self.settings = settings
        self.registry = registry or Registry(settings.registry_dir)
        self.pool = pool
        self.history = TxHistory(settings.tx_retrain_history)
        self.rounds: list[TxChallengeResult] = []
        self.backoff = WriteBackoff(settings.registry_retry_s)

    def job(self) -> TxChallengeJob:
        s = self.settings
        champ: ModelEntry | None = self.registry.champion(s.tx_model_name)
        return TxChallengeJob(list(self.history.rows), s.tx_model_name, s.tx_window, s.tx_retrain_epochs,
                              s.promote_margin, str(champ.onnx_path) if champ else None,
                              champ.sha256 if champ else None)

    async def round(self) -> TxChallengeResult:
        job = self.job()
        new, self.history.new = self.history.new, 0
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.pool, tx_challenge, job)
        RETRAIN_RUNS.labels("tx_schedule").inc()
        self.rounds.append(result)
        if not result.promote:
            self.backoff.landed()  # nothing to write: a failing streak, if any, is over
            REFUSALS.labels("tx_" + result.reason.split(":")[0].replace(" ", "_")).inc()
            log.warning("tx challenger not promoted: %s (mae %.3f vs champion %s)", result.reason,
                        result.challenger_mae, result.champion_mae)
            return result
        try:
            entry = self.registry.put(result.onnx_bytes, result.card)
            self.registry.set_champion(self.settings.tx_model_name, entry.version)
        except OSError as exc:  # a full disk, a quota, a read-only mount: the old champion serves on
            self.history.new += new  # still due: the round runs again once the backoff is
            champion = self.registry.champion(self.settings.tx_model_name)
            self.backoff.refused(self.registry, exc, champion.version if champion else "no tx model")
            return result
        self.backoff.landed()
        await announce(self.settings, self.settings.tx_model_name, entry)
        PROMOTIONS.labels("tx_value").inc()
        log.warning("tx champion is now %s (%s): %s", entry.version, result.card["family"], result.reason)
        return result

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(s.topic_txs, s.topic_blocks, **kafka_options.consumer(
            s, group_id=None, auto_offset_reset="earliest", enable_auto_commit=False))
        await consumer.start()
        try:
            while not stop.is_set():
                for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                    for msg in messages:
                        self._fold(tp.topic, msg.value)
                if (s.tx_retrain_every and self.history.new >= s.tx_retrain_every and len(self.history.rows) >= 200
                        and self.backoff.due()):
                    await self.round()
        finally:
            await consumer.stop()

    def _fold(self, topic: str, raw: bytes | None) -> None:
        try:
            if topic == self.settings.topic_blocks:
                block = Block.loads(raw or b"")
                if block.reorged:
                    self.history.retract(block.hash)
            else:
                self.history.add(Tx.loads(raw or b""))
        except (ValidationError, ValueError) as exc:  # the agent dead-letters bad records; here they are skipped
            log.info("tx retrainer skipped a record of %s: %s", topic, exc)

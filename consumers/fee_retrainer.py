"""The fee retrainer: challengers trained on the recent block history, promoted only when better.

It follows ``chain.blocks`` from the start (a groupless consumer: one retrainer per
deployment), keeps the last ``CHAINCAST_FEE_HISTORY_BLOCKS`` canonical blocks
(a retraction removes its block), and every ``CHAINCAST_FEE_RETRAIN_EVERY_BLOCKS``
new blocks runs a round: for each fee name it trains a ``CHAINCAST_FEE_RETRAIN_FAMILY``
challenger on the history's first 85 % and scores it, the serving champion (its ONNX
file, as served) and the reference on the same latest 15 %. The challenger is promoted
(registry champion + ``models.updates``, so every worker hot-swaps) only when its MAE
beats the champion's by ``CHAINCAST_RETRAIN_PROMOTE_MARGIN`` and the reference's. Where
no champion serves yet (a deployment without ``chaincast up``'s initial models), the first
round promotes the challenger if it beats the reference, else the reference itself.
A registry write that fails (a full disk, a quota, a read-only mount) is logged,
counted as a ``registry_write_failed`` refusal, and the whole round runs again
after a backoff (``CHAINCAST_REGISTRY_RETRY_S``, doubling) while the old champions
serve; the promotions whose writes landed are announced at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from chaincast.consumers.promotion import announce
from chaincast.consumers.registry import ModelEntry, Registry, WriteBackoff
from chaincast.models.fee_build import FeeCandidate, fee_model_name, fee_splits, store_fee_model, train_fee_model
from chaincast.models.fee_models import FeeFit, fit_fee_model, predict_chunked
from chaincast.models.fees import FEE_TARGETS, REFERENCE, BlockSamples
from chaincast.models.serving import session
from chaincast.stream.fees import block_row
from chaincast.stream.records import Block
from chaincast.stream import kafka_options
from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)

ROUND_FIT = FeeFit(max_epochs=4, patience=1, lgbm_trees=150)


@dataclass
class Verdict:
    name: str
    promoted: bool
    reason: str
    entry: ModelEntry | None = None
    write_error: OSError | None = None  # the registry refused the promotion: the round runs again


def onnx_mae(entry: ModelEntry, s: BlockSamples, chunk: int = 50_000) -> float:
    """MAE of a stored model on ``s``, run through onnxruntime exactly as a worker runs it."""
    sess = session(entry.onnx_path.read_bytes())
    y_hat = np.concatenate([sess.run(["y"], {"x": s.x(slice(i, i + chunk))})[0][:, 0]
                            for i in range(0, len(s), chunk)])
    return float(np.mean(np.abs(s.y.astype(np.float64) - y_hat)))


def fee_round(blocks: np.ndarray, registry: Registry, settings: Settings,
              options: FeeFit = ROUND_FIT) -> list[Verdict]:
    """One round over every fee name; see the module docstring."""
    out = []
    for target in FEE_TARGETS:
        for horizon in settings.fee_horizons:
            name = fee_model_name(settings.fee_model_prefix, target, horizon)
            try:
                candidate = train_fee_model(blocks[: int(len(blocks) * 0.85)], settings.fee_retrain_family, target,
                                            horizon, settings.fee_window, name, options)
                _, val, _ = fee_splits(blocks, settings.fee_window, horizon, target, val=0.15, test=0.0)
            except ValueError as exc:  # too few contiguous blocks yet
                out.append(Verdict(name, False, f"not enough history: {exc}"))
                continue
            mae = float(np.mean(np.abs(val.y - predict_chunked(candidate.model, val)[:, 0])))
            reference = fit_fee_model(REFERENCE[target], val, val, target, horizon, options)  # rules need no fit
            ref_mae = float(np.mean(np.abs(val.y - predict_chunked(reference, val)[:, 0])))
            champion = registry.champion(name)
            champ_mae = onnx_mae(champion, val) if champion is not None else float("inf")
            if mae >= ref_mae and champion is None:  # nothing serves yet: the reference itself will
                rule = train_fee_model(blocks[: int(len(blocks) * 0.85)], REFERENCE[target], target, horizon,
                                       settings.fee_window, name, options)
                out.append(_promote(registry, name, rule, f"first champion: the {REFERENCE[target]} reference (the "
                                                          f"{settings.fee_retrain_family} challenger did not beat it)"))
            elif mae >= ref_mae:
                out.append(Verdict(name, False, f"MAE {mae:.4e} does not beat {REFERENCE[target]} {ref_mae:.4e}"))
            elif mae >= champ_mae * (1 - settings.promote_margin):
                out.append(Verdict(name, False, f"MAE {mae:.4e} does not beat the champion's {champ_mae:.4e}"))
            else:
                candidate.card["parent"] = champion.version if champion is not None else None
                candidate.card["metrics"]["promotion"] = {"mae": mae, "mae_champion": None if champion is None
                                                          else champ_mae,
                                                          "mae_reference": ref_mae, "rows": len(val)}
                out.append(_promote(registry, name, candidate, f"MAE {mae:.4e} < champion {champ_mae:.4e}, "
                                                               f"{REFERENCE[target]} {ref_mae:.4e}"))
    return out


def _promote(registry: Registry, name: str, model: FeeCandidate, reason: str) -> Verdict:
    """Store ``model`` and make it the champion of ``name``; a write the registry refuses is the verdict's."""
    try:
        entry = registry.set_champion(name, store_fee_model(model, registry).version)
    except OSError as exc:  # a full disk, a quota, a read-only mount: the old champion serves on
        return Verdict(name, False, f"registry write failed: {exc}", write_error=exc)
    return Verdict(name, True, reason, entry)


def round_written(verdicts: list[Verdict], registry: Registry, backoff: WriteBackoff) -> bool:
    """True once every promotion of a round is in the registry; else log, count and back off (the round reruns)."""
    unwritten = [v for v in verdicts if v.write_error is not None]
    if not unwritten:
        backoff.landed()
        return True
    exc = unwritten[0].write_error
    assert exc is not None
    backoff.refused(registry, exc, ", ".join(f"{v.name} {c.version if (c := registry.champion(v.name)) else 'none'}"
                                             for v in unwritten))
    return False


class BlockHistory:
    """The last ``size`` canonical blocks of one chain, as ``models.blocks`` rows; retractions pop."""

    def __init__(self, size: int) -> None:
        self.rows: deque[list[float]] = deque(maxlen=size)
        self.hashes: deque[str] = deque(maxlen=size)

    def add(self, block: Block) -> bool:
        """Fold one record; True for a new canonical block (what counts towards a round)."""
        if block.reorged:
            if self.hashes and self.hashes[-1] == block.hash:
                self.rows.pop()
                self.hashes.pop()
            return False
        if block.base_fee is None or (self.rows and self.rows[-1][0] >= block.number):
            return False
        self.rows.append(block_row(block))
        self.hashes.append(block.hash)
        return True

    def array(self) -> np.ndarray:
        return np.asarray(self.rows, dtype=np.float64)


async def run_fee_retrainer(settings: Settings, stopping: asyncio.Event | None = None) -> None:
    """Follow ``chain.blocks`` and run a round every ``fee_retrain_every_blocks`` new blocks."""
    if settings.fee_retrain_every_blocks == 0:
        log.warning("fee retraining is off (CHAINCAST_FEE_RETRAIN_EVERY_BLOCKS=0)")
        return
    registry = Registry(settings.registry_dir)
    backoff = WriteBackoff(settings.registry_retry_s)
    history = BlockHistory(settings.fee_history_blocks)
    consumer = AIOKafkaConsumer(**kafka_options.consumer(settings, group_id=None, auto_offset_reset="earliest",
                                                          enable_auto_commit=False))
    await consumer.start()
    try:
        tp = TopicPartition(settings.topic_blocks, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        new = 0
        while stopping is None or not stopping.is_set():
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for msg in messages:
                    try:
                        new += history.add(Block.loads(msg.value))
                    except ValidationError:
                        continue  # the follower validated it; the fee agent dead-letters what it refuses
            if new >= settings.fee_retrain_every_blocks and backoff.due():
                verdicts = await asyncio.to_thread(fee_round, history.array(), registry, settings)
                for v in verdicts:
                    log.warning("fee round %s: %s (%s)", v.name, "promoted" if v.promoted else "kept", v.reason)
                    if v.promoted and v.entry is not None:
                        await announce(settings, v.name, v.entry)
                if round_written(verdicts, registry, backoff):
                    new = 0  # else ``new`` stays at the threshold: the round runs again once the backoff is due
    finally:
        await consumer.stop()

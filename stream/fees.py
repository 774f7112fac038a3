"""From blocks to fee forecasts: one chain's state, its served models, live scoring. No broker needed.

``FeeChain`` folds ``chain.blocks`` records of one chain in order:

- a canonical block extends the recent blocks, scores every earlier forecast whose
  horizon it completes (model and reference error, band coverage: a rolling window),
  and is forecast by every served fee model (base fee and fullness, each horizon);
- a retraction (``reorged: true``) of our newest block drops it and withdraws the
  forecasts made on it (returned as ``retracted`` records); the new canonical block
  that follows is forecast afresh.

Its state is a plain dict (a Faust table value), snapshotted once per batch. The
served models come from ``stream.fee_models``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chaincast.models.blocks import NUMBER
from chaincast.models.fees import GWEI, REFERENCE_FEATURE, window_of
from chaincast.models.serving import Forecaster
from chaincast.stream.records import Block, FeePrediction

log = logging.getLogger(__name__)

# A log base-fee change beyond this over <= 1000 blocks (e^10) is a broken model, not a forecast.
MAX_ABS_OUTPUT = 10.0
# Blocks kept beyond the window, so that a reorg (which pops them) leaves a full window to forecast from.
REORG_SLACK = 64


def block_row(block: Block) -> list[float]:
    """A Block as one row of ``models.blocks.BLOCK_COLUMNS`` (the same rows training reads)."""
    return [float(block.number), float(block.timestamp), float(block.base_fee or 0), float(block.gas_used),
            float(block.gas_limit), float(block.tx_count), math.nan]


def score_key(target: str, horizon: int) -> str:
    return f"{target}.h{horizon}"


@dataclass
class Scored:
    key: str  # target.hH
    error: float  # |actual - y_hat|
    error_reference: float
    covered: bool


@dataclass
class Outcome:
    predictions: list[FeePrediction] = field(default_factory=list)
    retracted: list[FeePrediction] = field(default_factory=list)
    scored: list[Scored] = field(default_factory=list)
    refused: str | None = None  # why a block could not be used (dead-lettered by the agent)


class FeeChain:
    """One chain's fee state: recent blocks, forecasts awaiting their outcome, rolling scores."""

    def __init__(self, state: dict[str, Any] | None, window: int, score_window: int) -> None:
        self.window, self.score_window = window, score_window
        state = state or {}
        self.rows: list[list[float]] = state.get("rows", [])
        self.hashes: list[str] = state.get("hashes", [])
        self.pending: list[dict[str, Any]] = state.get("pending", [])
        self.scores: dict[str, list[list[float]]] = state.get("scores", {})  # key -> [[err, err_ref, covered]]

    @property
    def state(self) -> dict[str, Any]:
        return {"rows": self.rows, "hashes": self.hashes, "pending": self.pending, "scores": self.scores}

    def stats(self, key: str) -> dict[str, float]:
        """Rolling live MAE of the model and the reference, skill over the reference, band coverage."""
        window = self.scores.get(key, [])
        if not window:
            return {}
        arr = np.asarray(window, dtype=np.float64)
        mae, ref = float(arr[:, 0].mean()), float(arr[:, 1].mean())
        return {"n": float(len(arr)), "mae": mae, "mae_reference": ref,
                "skill": 0.0 if ref == 0 else 1.0 - mae / ref, "coverage_80": float(arr[:, 2].mean())}

    def on_block(self, block: Block, models: dict[tuple[str, int], Forecaster]) -> Outcome:
        if block.reorged:
            return self._retract(block)
        out = Outcome()
        if block.base_fee is None:
            out.refused = "no_base_fee: a pre-London block has nothing to forecast"
            return out
        if self.rows and int(self.rows[-1][NUMBER]) >= block.number:
            if int(self.rows[-1][NUMBER]) == block.number and self.hashes[-1] == block.hash:
                return out  # a redelivery: its forecasts were made and sent
            # a replacement without its retraction (a follower restarted mid-reorg): drop what it replaces
            while self.rows and int(self.rows[-1][NUMBER]) >= block.number:
                out.retracted += self._pop()
        if self.rows and int(self.rows[-1][NUMBER]) != block.number - 1:
            self.rows, self.hashes = [], []  # a hole: no window may span it
        self.rows.append(block_row(block))
        self.hashes.append(block.hash)
        keep = self.window + 1 + REORG_SLACK
        del self.rows[:-keep], self.hashes[:-keep]
        out.scored = self._score(block)
        out.predictions = self._forecast(block, models)
        self.pending += [{**p.model_dump(mode="json"), "base_fee_wei": block.base_fee} for p in out.predictions]
        return out

    def _pop(self) -> list[FeePrediction]:
        number, block_hash = int(self.rows[-1][NUMBER]), self.hashes[-1]
        self.rows.pop()
        self.hashes.pop()
        gone = [p for p in self.pending if p["block"] == number and p["block_hash"] == block_hash]
        self.pending = [p for p in self.pending if not (p["block"] == number and p["block_hash"] == block_hash)]
        return [FeePrediction.model_validate({**p, "retracted": True, "created_at": int(time.time() * 1000)})
                for p in gone]

    def _retract(self, block: Block) -> Outcome:
        if not self.rows or int(self.rows[-1][NUMBER]) != block.number or self.hashes[-1] != block.hash:
            return Outcome()  # not a block we forecast from (before our start, or already retracted)
        return Outcome(retracted=self._pop())

    def _score(self, block: Block) -> list[Scored]:
        scored, keep = [], []
        ratio = block.gas_used / block.gas_limit
        for p in self.pending:
            due = p["block"] + p["horizon"]
            if due > block.number:
                keep.append(p)
                continue
            if due < block.number:
                continue  # its outcome fell into a hole
            actual = math.log(block.base_fee / p["base_fee_wei"]) if p["target"] == "base_fee" else ratio
            s = Scored(score_key(p["target"], p["horizon"]), abs(actual - p["y_hat"]), abs(actual - p["reference"]),
                       p["q10"] <= actual <= p["q90"])
            window = self.scores.setdefault(s.key, [])
            window.append([s.error, s.error_reference, float(s.covered)])
            del window[:-self.score_window]
            scored.append(s)
        self.pending = keep
        return scored

    def _forecast(self, block: Block, models: dict[tuple[str, int], Forecaster]) -> list[FeePrediction]:
        if not models:
            return []
        x = window_of(np.asarray(self.rows), self.window)
        if x is None:
            return []  # not yet window + 1 contiguous blocks
        fee = float(block.base_fee or 0)
        now = int(time.time() * 1000)
        out = []
        for (target, horizon), model in sorted(models.items()):
            y = model.predict(x)[0].astype(np.float64)  # (4,): y_hat, q10, q50, q90
            if not np.isfinite(y).all() or np.abs(y).max() > MAX_ABS_OUTPUT:
                log.warning("fee model %s %s gave %s; not served for block %d", model.name, model.version, y,
                            block.number)
                continue
            y_hat, q10, q50, q90 = (float(v) for v in y)
            gwei = {}
            if target == "base_fee":
                gwei = {"forecast_gwei": fee * math.exp(y_hat) / GWEI, "forecast_q10_gwei": fee * math.exp(q10) / GWEI,
                        "forecast_q90_gwei": fee * math.exp(q90) / GWEI}
            out.append(FeePrediction(
                chain_id=block.chain_id, block=block.number, block_hash=block.hash, timestamp=block.timestamp,
                target=target, horizon=horizon, y_hat=y_hat, q10=q10, q50=q50, q90=q90, base_fee_gwei=fee / GWEI,
                reference=float(x[0, -1, REFERENCE_FEATURE[target]]),  # EIP-1559 step / current fullness
                model_name=model.name, model_version=model.version, created_at=now, **gwei,
            ))
        return out


"""Serve the transaction-value model: load a verified ONNX file, keep the live context, forecast.

``TxForecaster.load`` trusts nothing (as ``models.serving.Forecaster``): the
sha256 must match the card, the card must be a ``tx_value`` card with this
code's feature list, the graph must take ``ids/num/value/masked`` with a
dynamic batch and give ``q`` (B, T, 3), and a smoke inference must be finite.

``TxContext`` holds the last window-1 revealed transactions of the chain and
turns each new one into a window whose last value is hidden: the forecast of a
transaction never sees its own value. No torch here.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from chaincast.models.serving import ORT_ERRORS, ModelRejected, _first_line, card_path_of, load_card_json, session
from chaincast.models.txs import NUM_FEATURES, TxTable, Vocab, num_features, target

TX_INPUTS = ("ids", "num", "value", "masked")


def _card(path: Path) -> dict[str, Any]:
    card = load_card_json(path)
    if not isinstance(card, dict) or card.get("kind") != "tx_value":
        raise ModelRejected(f"model card {path} is not a tx_value card")
    for key in ("sha256", "family", "window", "features", "vocab", "alert_residuals", "constant"):
        if key not in card:
            raise ModelRejected(f"model card {path} lacks {key!r}")
    if not isinstance(card["window"], int) or card["window"] < 2:
        raise ModelRejected(f"model card {path}: window must be an integer >= 2, not {card['window']!r}")
    if card["features"] != list(NUM_FEATURES):
        raise ModelRejected(f"card features {card['features']} differ from this code's {list(NUM_FEATURES)}")
    return card


@dataclass
class TxForecaster:
    name: str
    version: str
    family: str
    window: int
    vocab: Vocab
    card: dict[str, Any]
    sha256: str
    _session: ort.InferenceSession = field(repr=False)

    @classmethod
    def load(cls, onnx_path: str | Path, expected_sha256: str | None = None, threads: int = 1) -> TxForecaster:
        onnx_path = Path(onnx_path)
        try:
            data = onnx_path.read_bytes()
        except OSError as exc:
            raise ModelRejected(f"cannot read {onnx_path}: {exc.strerror or exc}") from None
        card = _card(card_path_of(onnx_path))
        sha = hashlib.sha256(data).hexdigest()
        if sha != card["sha256"] or (expected_sha256 is not None and sha != expected_sha256):
            raise ModelRejected(f"sha256 of {onnx_path.name} is {sha[:12]}, not the one announced")
        try:
            vocab = Vocab.from_card(card["vocab"])
            sess = session(data, threads)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelRejected(f"bad vocabulary in the card: {exc}") from None
        except ORT_ERRORS as exc:
            raise ModelRejected(f"onnxruntime refused {onnx_path.name}: {_first_line(exc)}") from None
        model = cls(str(card.get("name", "tx_value")), str(card.get("version", sha[:12])), str(card["family"]),
                    int(card["window"]), vocab, card, sha, sess)
        model._check()
        return model

    def _check(self) -> None:
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if [i.name for i in inputs] != list(TX_INPUTS) or [o.name for o in outputs] != ["q"]:
            raise ModelRejected(f"graph must map {list(TX_INPUTS)} -> ['q'], it maps "
                                f"{[i.name for i in inputs]} -> {[o.name for o in outputs]}")
        if isinstance(inputs[0].shape[0], int):
            raise ModelRejected("the graph's batch dimension is fixed; it must be dynamic")
        t, f = self.window, len(NUM_FEATURES)
        rng = np.random.default_rng(0)
        ids = np.zeros((2, t, 4), dtype=np.int64)
        ids[..., 0] = rng.integers(0, self.vocab.size, (2, t))
        masked = np.zeros((2, t), dtype=np.float32)
        masked[:, -1] = 1
        try:
            q = self.run(ids, rng.standard_normal((2, t, f)).astype(np.float32),
                         rng.standard_normal((2, t)).astype(np.float32), masked)
        except ORT_ERRORS as exc:
            raise ModelRejected(f"smoke inference failed: {_first_line(exc)}") from None
        if q.shape != (2, 3) or not np.isfinite(q).all():
            raise ModelRejected(f"smoke inference gave {q.shape} or non-finite quantiles")

    def run(self, ids: np.ndarray, num: np.ndarray, value: np.ndarray, masked: np.ndarray) -> np.ndarray:
        """Quantiles (B, 3) of each window's last position."""
        q = self._session.run(["q"], {"ids": ids, "num": num, "value": value, "masked": masked})[0]
        return q[:, -1, :]

    def threshold(self, q50: float, level: float) -> float:
        """The calibrated upper bound at ``level``: q50 plus that quantile of the validation residual."""
        res = self.card["alert_residuals"]
        return float(q50 + np.interp(level, res["levels"], res["values"]))

    @property
    def constant_q50(self) -> float:
        return float(self.card["constant"][1])


@dataclass
class Seen:
    """One revealed transaction of the context."""

    hash: str
    block_hash: str
    sender: str
    receiver: str
    hour: int
    weekday: int
    num: np.ndarray  # (F,)
    y: float


class TxContext:
    """The last ``window - 1`` revealed transactions; builds the window of each new one."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.seen: deque[Seen] = deque(maxlen=window - 1)
        self.block: int | None = None
        self.block_ts: int | None = None
        self.prev_block_ts: int | None = None

    def resize(self, window: int) -> None:
        if window != self.window:
            self.window = window
            self.seen = deque(self.seen, maxlen=window - 1)

    def observe(self, table: TxTable) -> list[Seen]:
        """Turn a table of new transactions (chain order, values not yet revealed to anyone) into context rows."""
        rows = []
        for i in range(len(table)):
            block, ts = int(table.block[i]), int(table.timestamp[i])
            if block != self.block:
                self.prev_block_ts, self.block, self.block_ts = self.block_ts, block, ts
            num = num_features(table.take(slice(i, i + 1)), self.prev_block_ts)[0]
            rows.append(Seen(str(table.hash[i]), str(table.block_hash[i]), str(table.sender[i]),
                             str(table.receiver[i]), int(ts // 3600 % 24), int((ts // 86400 + 3) % 7), num,
                             float(target(table.value_eth[i : i + 1])[0])))
        return rows

    def windows(self, rows: list[Seen], vocab: Vocab) -> tuple[int, tuple[np.ndarray, ...]]:
        """(k, inputs): the windows of ``rows[k:]``, each with the rows before it revealed; then reveal them.

        While the context is filling (the first window-1 transactions after a start) k skips those rows."""
        full = list(self.seen) + rows
        start = len(self.seen)
        for r in rows:
            self.seen.append(r)
        first = max(start, self.window - 1)
        if first >= len(full):
            return len(rows), ()
        sender = np.array([s.sender for s in full], dtype=object)
        receiver = np.array([s.receiver for s in full], dtype=object)
        ids = np.column_stack([vocab.ids(sender), vocab.ids(receiver), [s.hour for s in full],
                               [s.weekday for s in full]]).astype(np.int64)
        num = np.stack([s.num for s in full]).astype(np.float32)
        y = np.array([s.y for s in full], dtype=np.float32)
        idx = np.arange(first, len(full)) - self.window + 1
        take = idx[:, None] + np.arange(self.window)  # (R, T)
        value = y[take].copy()
        masked = np.zeros_like(value)
        masked[:, -1] = 1.0
        value[:, -1] = 0.0
        return first - start, (ids[take], num[take], value, masked)

    def drop_block(self, block_hash: str) -> int:
        """Forget the transactions of a block a reorg orphaned; returns how many."""
        kept = [s for s in self.seen if s.block_hash != block_hash]
        dropped = len(self.seen) - len(kept)
        self.seen = deque(kept, maxlen=self.window - 1)
        return dropped

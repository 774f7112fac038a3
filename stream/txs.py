"""Live transaction-value forecasts: the state behind the txs agent, and its Redis layout.

``TxLive`` is the pure part (no broker, no Redis): each new transaction is
forecast from the window of transactions before it with its own value hidden
(``models.tx_serving.TxContext``), then its value is revealed and scored; a value
above the calibrated bound at ``level`` is an alert. A reorg retraction of a
block takes that block's forecasts out of the running score and returns them
(and their alerts) so the agent can retract them downstream.

Its Redis keys (``tx_*``) are formatted by ``stream.redis_layout.RedisLayout``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from chaincast.models.tx_serving import TxContext, TxForecaster
from chaincast.models.txs import TxTable, record_row
from chaincast.stream.records import Tx, TxAlert, TxForecast

KEEP_BLOCKS = 256  # blocks whose forecasts can still be retracted (the producer's reorg depth is 64 by default)


class RollingSkill:
    """MAE of the model and of a constant over the last ``window`` forecasts; any one can be reverted by key.

    >>> s = RollingSkill(2)
    >>> s.update("a", 1.0, 2.0); s.update("b", 1.0, 4.0)
    >>> s.get()
    (1.0, 3.0, 0.6666666666666667)
    >>> s.revert("b"); s.get()
    True
    (1.0, 2.0, 0.5)
    >>> s.update("c", 3.0, 3.0); s.update("d", 0.0, 1.0); s.get()  # "a" left the window
    (1.5, 2.0, 0.25)
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._items: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._model = 0.0
        self._const = 0.0

    def update(self, key: str, err_model: float, err_const: float) -> None:
        if key in self._items:
            self.revert(key)
        err_model, err_const = float(err_model), float(err_const)
        self._items[key] = (err_model, err_const)
        self._model += err_model
        self._const += err_const
        while len(self._items) > self.window:
            _, (m, c) = self._items.popitem(last=False)
            self._model -= m
            self._const -= c

    def revert(self, key: str) -> bool:
        item = self._items.pop(key, None)
        if item is None:
            return False
        self._model -= item[0]
        self._const -= item[1]
        return True

    def __len__(self) -> int:
        return len(self._items)

    def get(self) -> tuple[float, float, float]:
        """(MAE of the model, MAE of the constant, skill = 1 - ratio); NaN when empty."""
        n = len(self._items)
        if n == 0:
            return math.nan, math.nan, math.nan
        mae, const = self._model / n, self._const / n
        return mae, const, (1.0 - mae / const) if const > 0 else 0.0


@dataclass
class Outcome:
    forecast: TxForecast
    alert: TxAlert | None
    entry_ids: list[str] = field(default_factory=list)  # Redis stream entries written for it (for retraction)


class TxLive:
    """The txs agent's state: context, running score, and the recent outcomes per block (for retraction)."""

    def __init__(self, window: int, skill_window: int, level: float) -> None:
        self.context = TxContext(window)
        self.skill = RollingSkill(skill_window)
        self.level = level
        self.by_block: OrderedDict[str, list[Outcome]] = OrderedDict()
        self.orphaned: OrderedDict[str, None] = OrderedDict()

    def forecast(self, txs: list[Tx], model: TxForecaster, now_ms: int) -> list[Outcome]:
        """Forecast each transaction (in chain order) from those before it, then reveal and score it."""
        txs = [t for t in txs if (t.block_hash or "") not in self.orphaned]  # late txs of a retracted block
        if not txs:
            return []
        self.context.resize(model.window)
        table = TxTable.from_rows([record_row(t) for t in txs])
        by_hash = {t.hash: t for t in txs}
        rows = self.context.observe(table)
        k, inputs = self.context.windows(rows, model.vocab)
        if not inputs:
            return []  # still filling the context after a start
        q = model.run(*inputs).astype(np.float64)  # (R, 3)
        out = []
        for row, (q10, q50, q90) in zip(rows[k:], q):
            if not np.isfinite([q10, q50, q90]).all():
                continue
            tx = by_hash[row.hash]
            bound = model.threshold(float(q50), self.level)
            fc = TxForecast(chain_id=tx.chain_id, block=tx.block, block_hash=tx.block_hash, hash=tx.hash,
                            from_=tx.from_, to=tx.to, q10=float(q10), q50=float(q50), q90=float(q90),
                            threshold=bound, y=row.y, value_eth=tx.value / 10**18, model_name=model.name,
                            model_version=model.version, created_at=now_ms)
            alert = TxAlert(forecast=fc, level=self.level, excess=row.y - bound) if row.y > bound else None
            self.skill.update(tx.hash, abs(row.y - q50), abs(row.y - model.constant_q50))
            outcome = Outcome(fc, alert)
            self.by_block.setdefault(tx.block_hash or "", []).append(outcome)
            out.append(outcome)
        while len(self.by_block) > KEEP_BLOCKS:
            self.by_block.popitem(last=False)
        return out

    def retract(self, block_hash: str) -> list[Outcome]:
        """A reorg orphaned ``block_hash``: its forecasts leave the score and the context; returns them."""
        self.orphaned[block_hash] = None
        while len(self.orphaned) > KEEP_BLOCKS:
            self.orphaned.popitem(last=False)
        self.context.drop_block(block_hash)
        gone = self.by_block.pop(block_hash, [])
        for o in gone:
            self.skill.revert(o.forecast.hash)
        return gone

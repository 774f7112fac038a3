"""Blocks -> per-minute on-chain features, the small state object behind the chain join.

Pure (no Faust): the agent feeds every record of ``chain.blocks`` to ``update`` and,
at a bar's close, asks ``features_for(bar.ts)``. Minutes are keyed by event time:
``block.timestamp * 1000`` floored to 60,000 ms, the same grid as ``bars.1m``.
Blocks are held by hash, so a retraction (``reorged=true``) removes exactly the
orphaned block's contribution and a redelivered block (at-least-once) counts once.

Per minute: the base fee at the minute's last block (gwei), its log change from the
minute's first block, mean gas utilisation, the transaction count and the ETH moved.

>>> from chaincast.stream.records import Block
>>> def blk(n, ts, fee_gwei, used, txs, eth, h=None, reorged=False):
...     return Block(chain_id=1, number=n, hash=h or f"0x{n:064x}", parent_hash="0x0", timestamp=ts,
...                  base_fee=fee_gwei * 10**9, gas_used=used, gas_limit=100, tx_count=txs,
...                  value_wei_sum=eth * 10**18, reorged=reorged)
>>> state = ChainMinutes()
>>> state.update(blk(1, 120, 10, 50, 3, 2))
120000
>>> _ = state.update(blk(2, 132, 20, 100, 5, 1))
>>> f = state.features_for(120_000)
>>> f.blocks, f.base_fee_gwei, round(f.base_fee_change, 4), f.gas_utilisation, f.tx_count, f.value_eth
(2, 20.0, 0.6931, 0.75, 8, 3.0)
>>> _ = state.update(blk(2, 132, 20, 100, 5, 1, reorged=True))   # block 2 was orphaned
>>> state.features_for(120_000).blocks, state.features_for(120_000).tx_count
(1, 3)
>>> state.features_for(60_000) is None
True
"""

from __future__ import annotations

import math

from chaincast.models.timeunits import MINUTE_MS
from chaincast.stream.records import Block, ChainFeatures

WEI_PER_GWEI = 10**9
WEI_PER_ETH = 10**18


def minute_of(block: Block) -> int:
    """The start (ms) of the bar minute a block belongs to.

    >>> from chaincast.stream.records import Block
    >>> minute_of(Block(chain_id=1, number=1, hash="0x1", parent_hash="0x0", timestamp=1_769_654_531,
    ...                 gas_used=0, gas_limit=1, tx_count=0))
    1769654520000
    """
    return block.timestamp * 1000 // MINUTE_MS * MINUTE_MS


def summarise(blocks: list[Block]) -> ChainFeatures:
    """Features of one minute's blocks (any order; a non-empty list)."""
    ordered = sorted(blocks, key=lambda b: b.number)
    fees = [b.base_fee for b in ordered if b.base_fee is not None]  # absent before London
    first, last = (fees[0], fees[-1]) if fees else (0, 0)
    return ChainFeatures(
        blocks=len(ordered),
        base_fee_gwei=last / WEI_PER_GWEI,
        base_fee_change=math.log(last / first) if first > 0 and last > 0 else 0.0,
        gas_utilisation=sum(b.gas_used / b.gas_limit for b in ordered) / len(ordered),
        tx_count=sum(b.tx_count for b in ordered),
        value_eth=sum(b.value_wei_sum for b in ordered) / WEI_PER_ETH,  # exact int sum, one rounding
    )


class ChainMinutes:
    """Canonical blocks by minute, the last ``keep_minutes`` minutes of event time."""

    def __init__(self, keep_minutes: int = 240) -> None:
        self.keep_minutes = keep_minutes
        self._minutes: dict[int, dict[str, Block]] = {}
        self._latest = 0

    def update(self, block: Block) -> int | None:
        """Apply one record of ``chain.blocks``; return the minute it changed (None: nothing changed)."""
        minute = minute_of(block)
        blocks = self._minutes.get(minute)
        if block.reorged:
            if blocks is None or blocks.pop(block.hash, None) is None:
                return None  # a retraction of a block we never saw (or evicted)
            if not blocks:
                del self._minutes[minute]
            return minute
        if minute < self._latest - self.keep_minutes * MINUTE_MS or (blocks and block.hash in blocks):
            return None  # older than we keep, or a redelivery
        self._minutes.setdefault(minute, {})[block.hash] = block
        if minute > self._latest:
            self._latest = minute
            self._evict()
        return minute

    def features_for(self, minute_ts: int) -> ChainFeatures | None:
        """Features of the minute starting at ``minute_ts`` (ms), None when no block landed in it."""
        blocks = self._minutes.get(minute_ts)
        return summarise(list(blocks.values())) if blocks else None

    def minutes(self) -> list[int]:
        return sorted(self._minutes)

    def _evict(self) -> None:
        horizon = self._latest - self.keep_minutes * MINUTE_MS
        for minute in [m for m in self._minutes if m < horizon]:
            del self._minutes[minute]

"""The chain follower's memory: the last K published blocks, and their durable checkpoint.

The window is what reorg handling walks back through (a block whose parent is not
our tip means the chain forked somewhere in it) and what a retraction republishes.
The cursor file holds the window plus the chain's identity (chain id, genesis hash),
written atomically after the blocks it names were acknowledged by the broker, so a
restart resumes at the next block and a different chain is never mistaken for ours.

>>> from chaincast.stream.records import Block
>>> def blk(n, h, p): return Block(chain_id=1, number=n, hash=h, parent_hash=p, timestamp=n,
...                               gas_used=0, gas_limit=1, tx_count=0)
>>> w = BlockWindow(3)
>>> for n in range(5): w.push(blk(n, f"h{n}", f"h{n-1}"))
>>> w.low, w.tip.number, w.hash_at(4), w.hash_at(1)
(2, 4, 'h4', None)
>>> [b.number for b in w.pop_above(2)]
[4, 3]
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from chaincast.stream.files import write_atomic
from chaincast.stream.records import Block

log = logging.getLogger(__name__)


class CursorError(RuntimeError):
    """The cursor file exists but cannot be read: refuse to guess where to resume."""


class BlockWindow:
    """The last ``size`` published canonical blocks, contiguous by number."""

    def __init__(self, size: int, blocks: Iterable[Block] = ()) -> None:
        self.size = size
        self._blocks: deque[Block] = deque(maxlen=size)
        for block in blocks:
            self.push(block)

    def __len__(self) -> int:
        return len(self._blocks)

    def __iter__(self):
        return iter(self._blocks)

    @property
    def tip(self) -> Block | None:
        return self._blocks[-1] if self._blocks else None

    @property
    def low(self) -> int | None:
        return self._blocks[0].number if self._blocks else None

    def hash_at(self, number: int) -> str | None:
        if not self._blocks or not self._blocks[0].number <= number <= self._blocks[-1].number:
            return None
        return self._blocks[number - self._blocks[0].number].hash

    def push(self, block: Block) -> None:
        tip = self.tip
        if tip is not None and (block.number != tip.number + 1 or block.parent_hash != tip.hash):
            raise ValueError(f"block {block.number} does not extend the tip {tip.number}")
        self._blocks.append(block)

    def pop_above(self, number: int) -> list[Block]:
        """Remove and return the blocks above ``number``, newest first (the order to retract them)."""
        popped = []
        while self._blocks and self._blocks[-1].number > number:
            popped.append(self._blocks.pop())
        return popped

    def clear(self) -> list[Block]:
        return self.pop_above(-1)


@dataclass(frozen=True)
class Cursor:
    chain_id: int
    genesis_hash: str
    blocks: list[Block]


class CursorFile:
    """One JSON file, replaced atomically (write a sibling, fsync, rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Cursor | None:
        if not self.path.exists():
            return None
        try:
            raw = json.loads(self.path.read_text())
            return Cursor(int(raw["chain_id"]), str(raw["genesis_hash"]),
                          [Block.model_validate(b) for b in raw["blocks"]])
        except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
            raise CursorError(f"cursor {self.path} is unreadable ({type(exc).__name__}); "
                              "move it away to start from --from-block or the head") from None

    def save(self, chain_id: int, genesis_hash: str, window: BlockWindow) -> None:
        body = json.dumps({
            "chain_id": chain_id, "genesis_hash": genesis_hash,
            "blocks": [json.loads(b.model_dump_json(by_alias=True)) for b in window],
        })
        write_atomic(self.path, body)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)

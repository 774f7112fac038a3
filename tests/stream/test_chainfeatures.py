"""ChainMinutes on a real mainnet series (1,000 consecutive blocks), checked against a
direct per-minute computation; retractions and redeliveries must not change the answer."""

from __future__ import annotations

import csv
import json
import math
import random
from collections import defaultdict
from pathlib import Path

import pytest

from chaincast.stream.chainfeatures import ChainMinutes, minute_of
from chaincast.stream.records import Block
SERIES = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "chain"


def mainnet_blocks() -> list[Block]:
    rows = json.loads((SERIES / "blocks_24337593_24338592.json").read_text())
    return [Block(chain_id=1, number=r["number"], hash=f"0x{r['number']:064x}", parent_hash=f"0x{r['number'] - 1:064x}",
                  timestamp=r["timestamp"], base_fee=r["base_fee_per_gas"], gas_used=r["gas_used"],
                  gas_limit=r["gas_limit"], tx_count=r["transaction_count"],
                  value_wei_sum=r["number"] * 10**15)  # the series has no values: a known, exact stand-in
            for r in rows]


def expected(blocks: list[Block]) -> dict[int, dict]:
    by_minute: dict[int, list[Block]] = defaultdict(list)
    for b in blocks:
        by_minute[b.timestamp // 60 * 60_000].append(b)
    out = {}
    for minute, bs in by_minute.items():
        bs.sort(key=lambda b: b.number)
        out[minute] = dict(blocks=len(bs), base_fee_gwei=bs[-1].base_fee / 1e9,
                           base_fee_change=math.log(bs[-1].base_fee / bs[0].base_fee),
                           gas_utilisation=sum(b.gas_used / b.gas_limit for b in bs) / len(bs),
                           tx_count=sum(b.tx_count for b in bs), value_eth=sum(b.value_wei_sum for b in bs) / 1e18)
    return out


def assert_matches(state: ChainMinutes, want: dict[int, dict]) -> None:
    assert state.minutes() == sorted(want)
    for minute, fields in want.items():
        got = state.features_for(minute)
        assert got is not None
        for name, value in fields.items():
            assert getattr(got, name) == pytest.approx(value, rel=1e-12, abs=1e-15), (minute, name)


def test_mainnet_minutes_match_a_direct_computation() -> None:
    blocks = mainnet_blocks()
    state = ChainMinutes(keep_minutes=10_000)
    for b in blocks:
        state.update(b)
    want = expected(blocks)
    assert 190 <= len(want) <= 210  # 1,000 blocks of 12 s is 200 minutes
    assert_matches(state, want)
    busiest = max(want, key=lambda m: want[m]["tx_count"])
    assert state.features_for(busiest).blocks == 5


def test_order_redelivery_and_reorgs_do_not_change_the_answer() -> None:
    blocks = mainnet_blocks()
    rng = random.Random(7)
    shuffled = blocks[:] + rng.sample(blocks, 100)  # at-least-once: some blocks twice
    rng.shuffle(shuffled)
    state = ChainMinutes(keep_minutes=10_000)
    for b in shuffled:
        state.update(b)
    # A reorg of depth 3 at the end: retract three blocks, publish their replacements.
    orphans = blocks[-3:]
    replacements = [b.model_copy(update={"hash": "0x" + "ee" * 31 + f"{i:02x}", "tx_count": b.tx_count + 1})
                    for i, b in enumerate(orphans)]
    for b in reversed(orphans):
        assert state.update(b.model_copy(update={"reorged": True})) == minute_of(b)
    for b in replacements:
        state.update(b)
    assert_matches(state, expected(blocks[:-3] + replacements))


def test_retraction_of_an_unknown_block_changes_nothing() -> None:
    state = ChainMinutes()
    b = mainnet_blocks()[0]
    assert state.update(b.model_copy(update={"reorged": True})) is None
    assert state.features_for(minute_of(b)) is None


def test_old_minutes_are_evicted() -> None:
    blocks = mainnet_blocks()
    state = ChainMinutes(keep_minutes=30)
    for b in blocks:
        state.update(b)
    minutes = state.minutes()
    assert len(minutes) <= 31 and minutes[-1] == minute_of(blocks[-1])
    assert state.update(blocks[0]) is None  # too old to matter: refused


def test_pre_london_csv_blocks_have_zero_base_fee_features() -> None:
    with open(SERIES / "blocks.csv") as f:
        rows = list(csv.DictReader(f))[:50]
    state = ChainMinutes(keep_minutes=10_000)
    for r in rows:
        n = int(r["number"])
        state.update(Block(chain_id=1, number=n, hash=f"0x{n:064x}", parent_hash=f"0x{n - 1:064x}",
                           timestamp=int(r["timestamp"]), gas_used=int(r["gas_used"]),
                           gas_limit=int(r["gas_limit"]), tx_count=int(r["transactions"])))
    features = [state.features_for(m) for m in state.minutes()]
    assert sum(f.tx_count for f in features) == sum(int(r["transactions"]) for r in rows)
    assert all(f.base_fee_gwei == 0 and f.base_fee_change == 0 for f in features)

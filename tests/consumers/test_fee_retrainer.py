"""A fee round: a challenger is promoted only when it beats both the champion and the reference."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import numpy as np

from chaincast.consumers.fee_retrainer import BlockHistory, fee_round, round_written
from chaincast.consumers.registry import Registry, WriteBackoff
from chaincast.models.blocks import load_blocks
from chaincast.models.fee_build import build_fee_model
from chaincast.models.fee_models import FeeFit
from chaincast.stream.metrics import REFUSALS
from chaincast.stream.records import Block
from chaincast.stream.settings import Settings
from tests.conftest import TEST_DATA, fill

FIT = FeeFit(max_epochs=2, max_steps_per_epoch=30)


def test_promotion_needs_both_the_champion_and_the_reference_beaten(tmp_path: Path) -> None:
    blocks = load_blocks(TEST_DATA / "chain" / "mainnet_blocks_18640000_18643999.csv.gz").blocks
    settings = Settings(CHAINCAST_HOME=str(tmp_path), CHAINCAST_FEE_HORIZONS="1", CHAINCAST_FEE_WINDOW="8")
    registry = Registry(settings.registry_dir)
    # Weak champions on purpose: no change at all, for the base fee and for fullness.
    for target in ("base_fee", "gas_ratio"):
        entry = build_fee_model(blocks[:2000], "persistence", target, 1, 8, registry, f"fees.{target}.h1", FIT)
        registry.set_champion(f"fees.{target}.h1", entry.version)
    before = {n: registry.champion(n).version for n in ("fees.base_fee.h1", "fees.gas_ratio.h1")}
    verdicts = {v.name: v for v in fee_round(blocks, registry, settings, FIT)}
    # The next base fee is the EIP-1559 rule: a learned challenger beats the weak champion but not
    # the rule, so it is not served.
    base = verdicts["fees.base_fee.h1"]
    assert not base.promoted and "does not beat eip1559" in base.reason
    assert registry.champion("fees.base_fee.h1").version == before["fees.base_fee.h1"]
    # Fullness: the learned challenger beats persistence (champion and reference) and is promoted.
    gas = verdicts["fees.gas_ratio.h1"]
    assert gas.promoted, gas.reason
    champion = registry.champion("fees.gas_ratio.h1")
    assert champion.version != before["fees.gas_ratio.h1"] and champion.card["parent"] == before["fees.gas_ratio.h1"]
    promo = champion.card["metrics"]["promotion"]
    assert promo["mae"] < promo["mae_champion"] and promo["mae"] < promo["mae_reference"]
    # The next round's champion is the promoted one, so the same challenger cannot win again by chance
    again = {v.name: v for v in fee_round(blocks, registry, settings, FIT)}
    assert not again["fees.gas_ratio.h1"].promoted or again["fees.gas_ratio.h1"].entry.version == champion.version


def test_history_keeps_canonical_blocks_and_drops_retracted_ones() -> None:
    h = BlockHistory(3)
    blocks = [Block(chain_id=1, number=n, hash=f"0x{n:064x}", parent_hash=f"0x{n - 1:064x}", timestamp=12 * n,
                    base_fee=10**9, gas_used=1, gas_limit=2, tx_count=1) for n in range(1, 6)]
    assert [h.add(b) for b in blocks] == [True] * 5
    assert not h.add(blocks[4].model_copy(update={"reorged": True}))
    assert h.array()[:, 0].tolist() == [3.0, 4.0]
    assert not h.add(blocks[1])  # an old block again
    assert not h.add(blocks[4].model_copy(update={"base_fee": None}))
    assert np.isnan(h.array()[:, 6]).all()


def test_a_first_round_without_champions_serves_the_reference_where_nothing_beats_it(tmp_path: Path) -> None:
    blocks = load_blocks(TEST_DATA / "chain" / "mainnet_blocks_18640000_18643999.csv.gz").blocks
    settings = Settings(CHAINCAST_HOME=str(tmp_path), CHAINCAST_FEE_HORIZONS="1", CHAINCAST_FEE_WINDOW="8")
    registry = Registry(settings.registry_dir)
    verdicts = {v.name: v for v in fee_round(blocks, registry, settings, FIT)}
    assert all(v.promoted for v in verdicts.values()), verdicts
    assert registry.champion("fees.base_fee.h1").card["family"] == "eip1559"  # exact at h = 1
    assert registry.champion("fees.gas_ratio.h1").card["family"] == "linear"


def test_a_full_registry_disk_fails_the_round_without_raising_and_it_lands_once_there_is_room(
        tmp_path: Path, small_fs) -> None:
    blocks = load_blocks(TEST_DATA / "chain" / "mainnet_blocks_18640000_18643999.csv.gz").blocks
    settings = Settings(CHAINCAST_HOME=str(tmp_path), CHAINCAST_FEE_HORIZONS="1", CHAINCAST_FEE_WINDOW="8",
                        CHAINCAST_REGISTRY_RETRY_S="100")
    registry = Registry(small_fs(tmp_path / "registry", 1024 * 1024))
    filler = fill(registry.root)  # the disk is full from here on
    backoff = WriteBackoff(settings.registry_retry_s)
    failed = REFUSALS.labels("registry_write_failed")
    before = failed._value.get()

    delays = []
    for attempt in (1, 2):  # the first round and its rerun once the backoff is due: both refused by the disk
        verdicts = fee_round(blocks, registry, settings, FIT)
        assert verdicts and all(not v.promoted and v.write_error is not None for v in verdicts), verdicts
        assert all(v.write_error.errno in (errno.ENOSPC, errno.EDQUOT) for v in verdicts)
        assert not round_written(verdicts, registry, backoff)
        delays.append(backoff.retry_at - time.monotonic())
        assert failed._value.get() - before == attempt and not backoff.due()
    assert 80 - 1 < delays[0] <= 100 and 160 - 1 < delays[1] <= 200  # doubled (less up to a fifth of jitter)
    assert registry.champion("fees.base_fee.h1") is None and registry.list() == []
    assert sorted(p.name for p in registry.root.iterdir()) == ["filler"]  # nothing half-written

    filler.unlink()  # room again: the rerun lands
    verdicts = fee_round(blocks, registry, settings, FIT)
    assert all(v.promoted and v.write_error is None for v in verdicts), verdicts
    assert round_written(verdicts, registry, backoff) and backoff.due() and backoff.failures == 0
    assert failed._value.get() - before == 2
    assert {v.name: registry.champion(v.name).version for v in verdicts} == {v.name: v.entry.version for v in verdicts}

"""A fee round: a challenger is promoted only when it beats both the champion and the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chaincast.consumers.fee_retrainer import BlockHistory, fee_round
from chaincast.consumers.registry import Registry
from chaincast.models.blocks import load_blocks
from chaincast.models.fee_build import build_fee_model
from chaincast.models.fee_models import FeeFit
from chaincast.stream.records import Block
from chaincast.stream.settings import Settings
from tests.conftest import TEST_DATA

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

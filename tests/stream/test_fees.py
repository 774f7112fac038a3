"""The fee state of one chain, driven without a broker: forecasts, live scores, reorg retractions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chaincast.consumers.registry import Registry
from chaincast.models.blocks import load_blocks
from chaincast.models.fee_build import build_fee_model
from chaincast.models.fee_models import FeeFit
from chaincast.models.fees import FEE_FEATURES
from chaincast.models.serving import Forecaster
from chaincast.stream.fees import FeeChain
from chaincast.stream.records import Block
from tests.conftest import TEST_DATA

WINDOW = 8


@pytest.fixture(scope="module")
def blocks() -> list[Block]:
    rows = load_blocks(TEST_DATA / "chain" / "mainnet_blocks_18640000_18643999.csv.gz").blocks
    return [Block(chain_id=1, number=int(r[0]), hash=f"0x{int(r[0]):064x}", parent_hash=f"0x{int(r[0]) - 1:064x}",
                  timestamp=int(r[1]), base_fee=int(r[2]), gas_used=int(r[3]), gas_limit=int(r[4]),
                  tx_count=0 if np.isnan(r[5]) else int(r[5])) for r in rows[:200]]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Forecaster]:
    """Real exported LightGBM fee models (fast to fit and export), loaded as the worker loads them."""
    rows = load_blocks(TEST_DATA / "chain" / "mainnet_blocks_18640000_18643999.csv.gz").blocks[1000:3000]
    registry = Registry(tmp_path_factory.mktemp("registry"))
    out = {}
    for target, h in (("base_fee", 1), ("base_fee", 3), ("gas_ratio", 3)):
        entry = build_fee_model(rows, "lightgbm", target, h, WINDOW, registry, f"fees.{target}.h{h}",
                                FeeFit(lgbm_trees=10))
        out[(target, h)] = Forecaster.load(entry.onnx_path, features=FEE_FEATURES)
    return out


def fold(chain: FeeChain, blocks: list[Block], models) -> list:
    return [chain.on_block(b, models) for b in blocks]


def test_every_canonical_block_with_a_full_window_is_forecast_and_scored(blocks, models) -> None:
    chain = FeeChain(None, WINDOW, score_window=50)
    outs = fold(chain, blocks[:40], models)
    assert [len(o.predictions) for o in outs[:WINDOW]] == [0] * WINDOW  # window + 1 blocks needed
    assert all(len(o.predictions) == 3 for o in outs[WINDOW:])
    p = {(q.target, q.horizon): q for q in outs[-1].predictions}
    assert p[("base_fee", 1)].forecast_gwei == pytest.approx(blocks[39].base_fee / 1e9 * np.exp(p[("base_fee", 1)].y_hat))
    assert p[("gas_ratio", 3)].forecast_gwei is None and p[("base_fee", 3)].block_hash == blocks[39].hash
    stats = chain.stats("base_fee.h1")
    assert stats["n"] == 40 - WINDOW - 1 and stats["mae_reference"] < 0.001  # EIP-1559 is exact at h = 1
    assert chain.stats("base_fee.h3")["n"] == 40 - WINDOW - 3
    restored = FeeChain(chain.state, WINDOW, 50)  # the table snapshot is the whole state
    assert restored.stats("base_fee.h3") == chain.stats("base_fee.h3")


def test_a_retraction_withdraws_the_orphans_forecasts_and_the_replacement_is_forecast(blocks, models) -> None:
    chain = FeeChain(None, WINDOW, 50)
    fold(chain, blocks[:30], models)
    orphan = blocks[29]
    made = {p["block_hash"] for p in chain.pending}
    assert orphan.hash in made
    out = chain.on_block(orphan.model_copy(update={"reorged": True}), models)
    assert len(out.retracted) == 3 and all(p.retracted and p.block_hash == orphan.hash for p in out.retracted)
    assert orphan.hash not in {p["block_hash"] for p in chain.pending}
    replacement = orphan.model_copy(update={"hash": "0x" + "ab" * 32, "gas_used": orphan.gas_used // 2})
    again = chain.on_block(replacement, models)
    assert len(again.predictions) == 3 and {p.block_hash for p in again.predictions} == {replacement.hash}
    # a retraction of a block we do not hold (another hash) changes nothing
    assert not chain.on_block(orphan.model_copy(update={"reorged": True}), models).retracted


def test_redelivery_hole_and_pre_london_blocks(blocks, models) -> None:
    chain = FeeChain(None, WINDOW, 50)
    fold(chain, blocks[:20], models)
    again = chain.on_block(blocks[19], models)  # at-least-once: the same block again
    assert not again.predictions and not again.retracted
    after_hole = fold(chain, blocks[25:25 + WINDOW + 2], models)  # blocks 20..24 never arrive
    assert [bool(o.predictions) for o in after_hole] == [False] * WINDOW + [True, True]
    old = chain.on_block(blocks[40].model_copy(update={"base_fee": None}), models)
    assert old.refused and old.refused.startswith("no_base_fee")

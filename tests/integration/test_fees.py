"""Fee forecasts end to end: replay node -> follower -> chain.blocks -> worker -> Redis + predictions.chain.

Real parts only: the replay node serving real mainnet blocks with injected reorgs, the
real block follower, the embedded broker and Redis, a real worker process. A forecast
made on a block that a reorg orphans must be withdrawn (a ``retracted`` record on the
topic and in the Redis history), and the replacement block forecast afresh.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import redis

from chaincast.consumers.fee_promotion import initial_fee_champions
from chaincast.consumers.promotion import announce
from chaincast.consumers.registry import Registry
from chaincast.models.blocks import load_blocks
from chaincast.models.fee_models import FeeFit
from chaincast.producers.chain import ChainFollower
from chaincast.producers.chain_server import ReplayNode
from chaincast.stream.publish import Publisher
from chaincast.stream.records import Block, FeePrediction
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.topics import ensure_topics
from tests.conftest import TEST_DATA
from tests.integration.conftest import read_topic, start_worker

BLOCKS = TEST_DATA / "chain" / "mainnet_blocks_18640000_18643999.csv.gz"
WAIT = 240.0  # a bound on each wait, not a timing assertion
TRAIN = 3000


def test_fee_forecasts_reach_redis_and_the_topic_and_reorgs_retract_them(settings_for, tmp_path) -> None:
    settings = settings_for(CHAINCAST_FEE_HORIZONS="1,5", CHAINCAST_FEE_WINDOW="16", CHAINCAST_CHAIN_RPS="0")
    blocks = load_blocks(BLOCKS).blocks
    asyncio.run(ensure_topics(settings))
    registry = Registry(settings.registry_dir)
    champions = initial_fee_champions(registry, settings, blocks[:TRAIN], families=("linear",),
                                      options=FeeFit(max_epochs=2, max_steps_per_epoch=20))
    for name, entry in champions.items():
        asyncio.run(announce(settings, name, entry))
    assert {e.card["target"] for e in champions.values()} == {"base_fee", "gas_ratio"}

    worker = start_worker(settings, tmp_path / "logs")
    try:
        followed = asyncio.run(follow(settings, blocks))
        orphans = {b.hash for b in followed if b.reorged}
        canonical = [b for b in followed if not b.reorged]
        assert orphans, "the replay node injected reorgs the follower must have retracted"

        def enough(msgs: list) -> bool:
            preds = [FeePrediction.loads(m.value) for m in msgs]
            withdrawn = {p.block_hash for p in preds if p.retracted}
            return orphans <= withdrawn and any(p.block == canonical[-1].number for p in preds)

        msgs = asyncio.run(read_topic(settings, settings.topic_fee_predictions, enough, timeout=WAIT))
        preds = [FeePrediction.loads(m.value) for m in msgs]
        assert enough(msgs), (f"{len(preds)} fee records; retracted {sum(p.retracted for p in preds)}; "
                              f"worker log: {(tmp_path / 'logs' / 'worker.log').read_text()[-2000:]}")
    finally:
        worker.stop(timeout=15)

    live = [p for p in preds if not p.retracted]
    assert {(p.target, p.horizon) for p in live} == {("base_fee", 1), ("base_fee", 5), ("gas_ratio", 1),
                                                      ("gas_ratio", 5)}
    for p in live:
        assert p.chain_id == 1 and p.model_version and p.q10 <= p.q90
        if p.target == "base_fee":
            assert abs(p.forecast_gwei - p.base_fee_gwei * np.exp(p.y_hat)) < 1e-9 * p.forecast_gwei
            assert p.forecast_q10_gwei <= p.forecast_q90_gwei
    # every withdrawn forecast was made on an orphaned block, and its replacement was forecast afresh
    for p in preds:
        if p.retracted:
            assert p.block_hash in orphans
            replacement = [b for b in canonical if b.number == p.block and b.hash != p.block_hash]
            assert replacement and any(q.block_hash == replacement[-1].hash for q in live)
    # the EIP-1559 rule is the h=1 base-fee reference: it matches the next block on real mainnet data
    h1 = {p.block: p for p in live if p.target == "base_fee" and p.horizon == 1}
    fee = {b.number: b.base_fee for b in canonical}
    exact = [abs(np.log(fee[n + 1] / fee[n]) - p.reference) < 1e-6 for n, p in h1.items() if n + 1 in fee]
    assert exact and np.mean(exact) > 0.9

    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            latest = client.hgetall(RedisLayout.of(settings).fee_latest(1))
            if latest.get("block") == str(canonical[-1].number):
                break
            time.sleep(0.5)
        assert latest["block_hash"] == canonical[-1].hash
        for key in ("base_fee.h1", "base_fee.h5", "gas_ratio.h1", "gas_ratio.h5"):
            assert f"{key}.y_hat" in latest and f"{key}.model_version" in latest
        assert float(latest["base_fee.h5.forecast_gwei"]) > 0
        history = client.xrange(RedisLayout.of(settings).fee_history(1))
        assert {e["block_hash"] for _, e in history if e["retracted"] == "True"} >= orphans
        scores = client.hgetall(RedisLayout.of(settings).fee_score(1))
        assert float(scores["base_fee.h1.n"]) > 0 and "base_fee.h5.skill" in scores
    finally:
        client.close()


async def follow(settings, blocks: np.ndarray) -> list[Block]:
    """Follow the replay node (reorgs every 7 heads) until three reorgs were retracted; the records it published."""
    first = int(blocks[TRAIN, 0])
    async with ReplayNode(blocks, speed=120.0, start=first, reorg_every=7) as node:
        settings = settings.model_copy(update={"chain_from_block": first - settings.fee_window - 2})
        async with Publisher(settings) as publisher:
            follower = ChainFollower(settings, publisher, node_url=node.ws_url)
            task = asyncio.create_task(follower.run())
            deadline = time.monotonic() + WAIT
            while len(follower.reorgs) < 3 and time.monotonic() < deadline and not task.done():
                await asyncio.sleep(0.2)
            follower.stop()
            await task
    total = follower.published["canonical"] + follower.published["retraction"]
    msgs = await read_topic(settings, settings.topic_blocks, lambda m: len(m) >= total)
    return [Block.loads(m.value) for m in msgs]

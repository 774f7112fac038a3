"""The fee agent: ``chain.blocks`` -> fee forecasts -> Redis + ``predictions.chain``.

For every canonical block, every served fee model (base fee and fullness, each
horizon) forecasts from the window of recent blocks; a retraction withdraws the
forecasts made on the orphaned block (a ``retracted: true`` record on the topic and
in the Redis history) and the replacement block is forecast afresh. Forecasts are
scored live when their block arrives, against the reference (EIP-1559 / persistence).
``chain.blocks`` has one partition, so one worker of the group owns a chain; its
state (``stream.fees.FeeChain``) lives in a changelogged table keyed by chain id.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from pydantic import ValidationError

from chaincast.stream.batches import each_batch
from chaincast.stream.fee_models import fee_slots, serving, watch_fee_models
from chaincast.stream.fees import FeeChain, Outcome
from chaincast.stream.metrics import (
    FEE_BASE_FEE, FEE_FORECAST, FEE_GAS_RATIO_FORECAST, FEE_LIVE_COVERAGE, FEE_LIVE_MAE, FEE_LIVE_SKILL,
    FEE_PREDICTIONS, FEE_RETRACTIONS,
)
from chaincast.stream.records import Block, FeePrediction

if TYPE_CHECKING:
    from chaincast.stream.context import Streams

log = logging.getLogger(__name__)
SOURCE = "stream.fees"


def _observe(chain_id: str, chain: FeeChain, preds: list[FeePrediction], retracted: list[FeePrediction],
             scored_keys: set[str]) -> dict[str, dict[str, float]]:
    FEE_RETRACTIONS.inc(len(retracted))
    for p in preds:
        FEE_PREDICTIONS.labels(p.target).inc()
        FEE_BASE_FEE.labels(chain_id).set(p.base_fee_gwei)
        if p.target == "base_fee":
            for band, value in (("mid", p.forecast_gwei), ("q10", p.forecast_q10_gwei), ("q90", p.forecast_q90_gwei)):
                FEE_FORECAST.labels(chain_id, str(p.horizon), band).set(value or 0.0)
        else:
            FEE_GAS_RATIO_FORECAST.labels(chain_id, str(p.horizon)).set(p.y_hat)
    scores = {}
    for key in scored_keys:
        stats = chain.stats(key)
        if not stats:
            continue
        target, horizon = key.rsplit(".h", 1)
        FEE_LIVE_MAE.labels(target, horizon, "served").set(stats["mae"])
        FEE_LIVE_MAE.labels(target, horizon, "reference").set(stats["mae_reference"])
        FEE_LIVE_SKILL.labels(target, horizon).set(stats["skill"])
        FEE_LIVE_COVERAGE.labels(target, horizon).set(stats["coverage_80"])
        scores[key] = stats
    return scores


def register(s: "Streams") -> None:
    settings = s.settings
    blocks = s.app.topic(settings.topic_blocks, key_serializer="raw", value_serializer="raw", partitions=1)
    out = s.app.topic(settings.topic_fee_predictions, key_serializer="raw", value_serializer="raw", partitions=1)
    table = s.app.Table("fee-state", partitions=1, key_type=str, use_partitioner=True)
    slots = fee_slots(settings)
    models_known = asyncio.Event()

    @s.app.task
    async def follow_fee_models() -> None:
        try:
            await watch_fee_models(settings, slots, caught_up=models_known, on_refused=s.model_refused)
        finally:
            models_known.set()

    @s.app.agent(blocks, name="fees")
    async def fees(stream):  # noqa: ANN001 - a faust stream
        await models_known.wait()  # the champions announced before this worker started serve from its first block
        await each_batch(stream, 256, handle, SOURCE)

    async def handle(events: list) -> None:
        await fold([e.value for e in events], serving(slots))  # the models once per batch: a hot swap never splits one

    async def fold(values: list[bytes], models: dict) -> None:
        """One batch: forecast, dead-letter what is refused, write Redis and the topic, then record the state."""
        batch: dict[str, tuple[FeeChain, Outcome]] = {}
        sent: list = []  # broker acks (dead letters, forecasts) to confirm before the state is recorded
        for raw in values:
            try:
                block = Block.loads(raw)
            except ValidationError as exc:
                sent.append(await s.dead_letter(SOURCE, raw, f"invalid: {exc.errors()[0]['msg']}",
                                                topic=settings.topic_blocks))
                continue
            key = str(block.chain_id)
            if key not in batch:
                batch[key] = (FeeChain(table.get(key), settings.fee_window, settings.fee_score_window), Outcome())
            chain, total = batch[key]
            outcome = chain.on_block(block, models)
            if outcome.refused:
                sent.append(await s.dead_letter(SOURCE, raw, outcome.refused, topic=settings.topic_blocks,
                                                key=key.encode()))
            total.predictions += outcome.predictions
            total.retracted += outcome.retracted
            total.scored += outcome.scored
        for key, (chain, total) in batch.items():  # Redis and the topic first (see stream.failure) ...
            scores = _observe(key, chain, total.predictions, total.retracted, {x.key for x in total.scored})
            await s.sink.write_fees(int(key), total.predictions, total.retracted, scores)
            sent += [await out.send(key=key.encode(), value=p.dumps()) for p in [*total.retracted, *total.predictions]]
        await asyncio.gather(*sent)
        # ... then the state, on the broker before the ack: a crash before this redoes the batch (measured
        # without the wait: a worker stopped with exit 75 came back without the last blocks' window).
        await s.record(table, {key: chain.state for key, (chain, _total) in batch.items()})




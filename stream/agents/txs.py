"""The txs agent: ``chain.txs`` (+ reorg retractions on ``chain.blocks``) -> value forecasts, alerts, live skill.

Registered only with ``CHAINCAST_CHAIN_TXS=true``. One agent reads both topics
(one partition each, co-assigned to one worker), so a retraction is handled in
order with the transactions it retracts. Each batch: forecast every new
transaction before its value is revealed (``stream.txs.TxLive``), write the
forecasts and alerts to Redis in one pipeline, send the alerts to the
``alerts`` topic, update the running score. A ``reorged=true`` block retracts
its forecasts: Redis entries deleted, its alerts re-sent with
``retracted=true``, its errors taken out of the score.

The model (``CHAINCAST_TX_MODEL_NAME``, default ``tx_value``) is hot-swapped from
``models.updates`` like the market model: trusted only from the registry (and,
with a key, signed), verified, loaded off the loop, and read once per batch; a
refused update is dead-lettered. State (the context window) is in memory: after a restart
the first window-1 transactions refill it and are not forecast.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

from pydantic import ValidationError

from chaincast.models.serving import ORT_ERRORS
from chaincast.models.tx_serving import TxForecaster
from chaincast.stream.batches import each_batch
from chaincast.stream.metrics import TX_ALERTS, TX_FORECASTS, TX_LIVE_MAE, TX_LIVE_SKILL, TX_RETRACTED
from chaincast.stream.model_slot import ModelSlot, watch_models
from chaincast.stream.records import Block, ModelUpdate, Tx
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.txs import Outcome, TxLive

if TYPE_CHECKING:
    from chaincast.stream.context import Streams
    from chaincast.stream.settings import Settings

log = logging.getLogger(__name__)
SOURCE = "stream.txs"


class TxModelSlot(ModelSlot):
    """The serving slot of the transaction-value model: same swap rules, another loader."""

    def _load(self, update: ModelUpdate) -> TxForecaster:  # type: ignore[override]
        return TxForecaster.load(self.path_of(update), expected_sha256=update.sha256, threads=self.threads)


def tx_slot(settings: "Settings") -> TxModelSlot:
    """The worker's tx model slot: trusted only from the registry, like every slot."""
    return TxModelSlot(settings.tx_model_name, threads=settings.onnx_threads, **TxModelSlot.trusting(settings))


def _fields(o: Outcome) -> dict[str, str]:
    return {k: str(v) for k, v in o.forecast.model_dump(by_alias=True).items() if v is not None}


def register(s: "Streams") -> None:
    settings = s.settings
    keys = RedisLayout.of(settings)
    slot = tx_slot(settings)
    live = TxLive(window=32, skill_window=settings.tx_skill_window, level=settings.tx_alert_level)
    both = s.app.topic(settings.topic_txs, settings.topic_blocks, key_serializer="raw", value_serializer="raw")
    alerts = s.app.topic(settings.topic_alerts, key_serializer="raw", value_serializer="raw", partitions=1)

    async def write(outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        pipe = s.sink.client.pipeline(transaction=False)
        for o in outcomes:
            chain = o.forecast.chain_id
            fields = _fields(o)
            pipe.xadd(keys.tx_history(chain), fields, maxlen=settings.history_maxlen, approximate=True)
            if o.alert is not None:
                pipe.xadd(keys.tx_alerts(chain), {**fields, "level": str(o.alert.level),
                          "excess": str(o.alert.excess), "retracted": "false"},
                          maxlen=settings.history_maxlen, approximate=True)
        last = outcomes[-1]
        pipe.delete(keys.tx_latest(last.forecast.chain_id))
        pipe.hset(keys.tx_latest(last.forecast.chain_id), mapping=_fields(last))
        mae, const, skill = live.skill.get()
        pipe.hset(keys.tx_score(settings.tx_model_name),
                  mapping={"mae": str(mae), "mae_constant": str(const), "skill": str(skill),
                           "n": str(len(live.skill)), "version": last.forecast.model_version,
                           "updated_at": str(int(time.time() * 1000))})
        ids = iter(await pipe.execute())
        for o in outcomes:
            o.entry_ids.append(next(ids))
            if o.alert is not None:
                o.entry_ids.append(next(ids))
        for o in outcomes:
            if o.alert is not None:
                TX_ALERTS.inc()
                await alerts.send(key=b"txs", value=o.alert.dumps())
        TX_FORECASTS.inc(len(outcomes))
        if not math.isnan(mae):
            TX_LIVE_MAE.labels("model").set(mae)
            TX_LIVE_MAE.labels("constant").set(const)
            TX_LIVE_SKILL.set(skill)

    async def retract(gone: list[Outcome]) -> None:
        if not gone:
            return
        chain = gone[0].forecast.chain_id
        pipe = s.sink.client.pipeline(transaction=False)
        for o in gone:
            pipe.xdel(keys.tx_history(chain), o.entry_ids[0])
            if o.alert is not None:
                pipe.xdel(keys.tx_alerts(chain), *o.entry_ids[1:])
                pipe.xadd(keys.tx_alerts(chain), {**_fields(o), "retracted": "true"},
                          maxlen=settings.history_maxlen, approximate=True)
        await pipe.execute()
        TX_RETRACTED.inc(len(gone))
        for o in gone:
            if o.alert is not None:
                await alerts.send(key=b"txs", value=o.alert.model_copy(update={"retracted": True}).dumps())

    @s.app.agent(both, name="txs")
    async def txs(stream):  # noqa: ANN001 - a faust stream
        await slot.ready.wait()  # hold transactions (not drop them) until a model serves
        await each_batch(stream, 500, handle, SOURCE)

    async def handle(events: list) -> None:
        pending: list[Tx] = []
        for event in events:
            raw = event.value
            if event.message.topic == settings.topic_blocks:
                try:
                    block = Block.loads(raw)
                except ValidationError:
                    continue  # the chain features consumer logs unreadable blocks
                if block.reorged:
                    await write(forecast(pending))  # keep order: what came before the retraction first
                    pending = []
                    await retract(live.retract(block.hash))
                continue
            try:
                pending.append(Tx.loads(raw))
            except ValidationError as exc:
                await s.dead_letter(SOURCE, raw, f"invalid: {exc.errors()[0]['msg']}", topic=settings.topic_txs)
        await write(forecast(pending))

    def forecast(pending: list[Tx]) -> list[Outcome]:
        model = slot.current
        if not pending or model is None:
            return []
        try:
            return live.forecast(pending, model, int(time.time() * 1000))
        except ORT_ERRORS as exc:  # a model that loaded but fails on live windows: skip the batch, keep going
            log.error("tx model %s failed on %d transactions: %s", model.version, len(pending), exc)
            return []

    @s.app.task
    async def follow_tx_models() -> None:
        await watch_models(settings, slot, on_swap=s.sink.write_model, on_refused=s.model_refused)

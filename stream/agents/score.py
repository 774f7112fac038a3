"""The score agent: ``bars.1m`` + ``predictions`` -> live MAE / skill / coverage per symbol, forecaster and version.

One agent reads both topics: both are keyed by market with the same partition
count, so a market's bars and predictions land on the same partition number
and so in the same worker, and its state (``stream.scoring.MarketScore``) lives
in one changelogged table keyed by the market key's bytes (serialized raw, so
a market's entry shares its bars' partition number and recovers with them). Scores go to Prometheus and to the
score hash of each forecaster through the worker's sink (``stream.sink``, keys
from ``stream.redis_layout``); a full window of negative live skill sets the
flag of the retrainer of that forecaster's model there too.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from pydantic import ValidationError

from chaincast.stream.batches import each_batch
from chaincast.stream.metrics import LIVE_COVERAGE, LIVE_MAE, LIVE_SCORED, LIVE_SKILL, RETRAIN_REQUESTS
from chaincast.stream.records import Bar, Prediction, forecaster_key
from chaincast.stream.scoring import MarketScore, Update

if TYPE_CHECKING:
    from chaincast.stream.context import Streams

log = logging.getLogger(__name__)
SOURCE = "stream.score"
EVERY_S = 0.5  # a batch at most this often: scores are not on a forecast's path, and each batch writes
# every market it touched (Redis and the changelog) once, however many bars and forecasts it held


def register(s: "Streams") -> None:
    settings = s.settings
    # Written from batches: the key picks the partition, not the current event; the market key's bytes,
    # serialized raw, pick its bars' partition (as the markets table, stream.app).
    table = s.app.Table("scores", partitions=settings.partitions, key_type=bytes, use_partitioner=True)
    both = s.app.topic(settings.topic_bars, settings.topic_predictions, key_serializer="raw",
                       value_serializer="raw")

    specs = settings.forecast_specs
    max_h = max(spec.horizon for spec in specs)
    # The retrainer of each forecaster watches the flag of its model's name (consumers.retrainer).
    model_names = {forecaster_key(sp.target, sp.horizon): sp.model_name(settings.model_name, default=sp == specs[0])
                   for sp in specs}

    async def publish(symbol: str, state: MarketScore, update: Update) -> None:
        for forecaster, version in update.dropped:  # bounded labels: a replaced version's series goes
            for gauge in (LIVE_MAE, LIVE_SKILL, LIVE_COVERAGE):
                try:
                    gauge.remove(symbol, forecaster, version)
                except KeyError:  # never exported in this process (scored before a restart)
                    pass
        if not update.stats:
            return
        LIVE_SCORED.labels(symbol).inc(len(update.stats))
        for st in update.stats:
            LIVE_MAE.labels(symbol, st.forecaster, st.version).set(st.mae)
            LIVE_SKILL.labels(symbol, st.forecaster, st.version).set(st.skill)
            LIVE_COVERAGE.labels(symbol, st.forecaster, st.version).set(st.coverage_80)
        now = str(int(time.time() * 1000))
        hashes = {}
        for forecaster in dict.fromkeys(st.forecaster for st in update.stats):  # one hash per forecaster touched
            latest = [st for st in update.stats if st.forecaster == forecaster][-1]
            fields = {**latest.fields(), "updated_at": now}
            for v in state.versions(forecaster):
                fields.update({f"{k}@{v}": val for k, val in state.stats(forecaster, v).fields().items()
                               if k not in ("version", "forecaster", "model_name")})
            hashes[forecaster] = fields
        reasons = {}
        for forecaster, reason in (update.retrain or {}).items():
            model_name = model_names.get(forecaster) or hashes.get(forecaster, {}).get("model_name", "")
            RETRAIN_REQUESTS.labels(symbol).inc()
            log.warning("%s: %s; asking the retrainer of %s for a round", symbol, reason, model_name)
            reasons[model_name] = f"{symbol}: {reason}"
        await s.sink.write_scores(symbol, hashes, retrain=reasons)

    @s.app.agent(both, name="score")
    async def score(stream):  # noqa: ANN001 - a faust stream
        await each_batch(stream, 500, handle, SOURCE, every_s=EVERY_S)

    async def handle(events: list) -> None:
        # Batched: each market's state is written to its changelog and to Redis once per batch.
        states: dict[bytes, tuple[str, MarketScore, Update]] = {}  # market key -> merged update of the batch
        for event in events:
            topic, raw = event.message.topic, event.value
            market = event.key or b""
            try:
                record: Bar | Prediction = (Bar.loads(raw) if topic == settings.topic_bars
                                            else Prediction.loads(raw))
            except ValidationError:
                continue  # the bars and predict agents dead-letter what they refuse; nothing new to say here
            if market not in states:
                states[market] = (record.symbol, MarketScore(table.get(market), settings.score_window, max_h),
                                  Update(stats=[], dropped=[]))
            symbol, state, total = states[market]
            update = state.on_bar(record) if isinstance(record, Bar) else state.on_prediction(record)
            states[market] = (symbol, state, total.merge(update))
        for symbol, state, total in states.values():  # Redis first, then the state that stands for it
            await publish(symbol, state, total)
        await s.record(table, {market: state.state for market, (_, state, _) in states.items()})

"""The score agent: ``bars.1m`` + ``predictions`` -> live MAE / skill / coverage per symbol and version.

One agent reads both topics: both are keyed by market with the same partition
count, so a market's bars and predictions land on the same partition number
and so in the same worker, and its state (``stream.scoring.MarketScore``) lives
in one changelogged table keyed by the market (str keys, default serializers:
what Faust's changelog recovery handles). Scores go to Prometheus and to the
score hash through the worker's sink (``stream.sink``, keys from
``stream.redis_layout``); a full window of negative live skill sets the
retrainer's flag there too.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from pydantic import ValidationError

from chaincast.stream.failure import stop_unacknowledged
from chaincast.stream.metrics import LIVE_COVERAGE, LIVE_MAE, LIVE_SCORED, LIVE_SKILL, RETRAIN_REQUESTS
from chaincast.stream.records import Bar, Prediction
from chaincast.stream.scoring import MarketScore, Update

if TYPE_CHECKING:
    from chaincast.stream.context import Streams

log = logging.getLogger(__name__)
SOURCE = "stream.score"


def register(s: "Streams") -> None:
    settings = s.settings
    # Written from batches: the key picks the partition (as for the bars topic), not the current event.
    table = s.app.Table("scores", partitions=settings.partitions, key_type=str, use_partitioner=True)
    both = s.app.topic(settings.topic_bars, settings.topic_predictions, key_serializer="raw",
                       value_serializer="raw")

    async def publish(symbol: str, state: MarketScore, update: Update) -> None:
        for version in update.dropped:  # bounded labels: a replaced version's series goes
            for gauge in (LIVE_MAE, LIVE_SKILL, LIVE_COVERAGE):
                try:
                    gauge.remove(symbol, version)
                except KeyError:  # never exported in this process (scored before a restart)
                    pass
        if not update.stats:
            return
        LIVE_SCORED.labels(symbol).inc(len(update.stats))
        for st in update.stats:
            LIVE_MAE.labels(symbol, st.version).set(st.mae)
            LIVE_SKILL.labels(symbol, st.version).set(st.skill)
            LIVE_COVERAGE.labels(symbol, st.version).set(st.coverage_80)
        latest = update.stats[-1]
        fields = {**latest.fields(), "updated_at": str(int(time.time() * 1000))}
        for v in state.scores:
            fields.update({f"{k}@{v}": val for k, val in state.stats(v).fields().items() if k != "version"})
        reason = None
        if update.retrain:
            RETRAIN_REQUESTS.labels(symbol).inc()
            log.warning("%s: %s; asking the retrainer for a round", symbol, update.retrain)
            reason = f"{symbol}: {update.retrain}"
        await s.sink.write_score(symbol, fields, model_name=settings.model_name, retrain_reason=reason)

    @s.app.agent(both, name="score")
    async def score(stream):  # noqa: ANN001 - a faust stream
        # Batched: each market's state is written to its changelog and to Redis once per batch.
        async for events in stream.take_events(500, within=0.005):
            states: dict[str, tuple[str, MarketScore, Update]] = {}  # market -> merged update of the batch
            for event in events:
                topic, raw = event.message.topic, event.value
                market = (event.key or b"").decode(errors="replace")
                try:
                    record: Bar | Prediction = (Bar.loads(raw) if topic == settings.topic_bars
                                                else Prediction.loads(raw))
                except ValidationError:
                    continue  # the bars and predict agents dead-letter what they refuse; nothing new to say here
                if market not in states:
                    states[market] = (record.symbol, MarketScore(table.get(market), settings.score_window),
                                      Update(stats=[], dropped=[]))
                symbol, state, total = states[market]
                update = state.on_bar(record) if isinstance(record, Bar) else state.on_prediction(record)
                states[market] = (symbol, state, Update(stats=total.stats + update.stats,
                                                        dropped=total.dropped + update.dropped,
                                                        retrain=update.retrain or total.retrain))
            try:  # Redis first, then the state that stands for it (see stream.failure)
                for market, (symbol, state, total) in states.items():
                    await publish(symbol, state, total)
                    table[market] = state.state
            except Exception as exc:  # noqa: BLE001 - Redis beyond its retry budget, or a bug: never ack
                stop_unacknowledged(SOURCE, exc)

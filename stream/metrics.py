"""Prometheus metrics of the stream workers (and the shared dead-letter counter).

Labels stay bounded: symbol (configured set), stage, reason kind. Never ids or URLs.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

DEADLETTERED = Counter(
    "chaincast_deadletter_total", "Messages refused and sent to the dead-letter topic", ["source", "reason"]
)
TRADES = Counter("chaincast_trades_total", "Trades folded into bars", ["symbol"])
TRADE_MESSAGES = Counter("chaincast_trade_messages_total", "Messages read from the trades topic")
BARS = Counter("chaincast_bars_total", "1-minute bars closed and emitted", ["symbol"])
PREDICTIONS = Counter("chaincast_predictions_total", "Predictions written to Redis and the topic", ["symbol"])
LAST_CLOSE = Gauge("chaincast_last_close", "Close of the latest bar", ["symbol"])
FORECAST = Gauge("chaincast_forecast_price", "Latest forecast price and its calibrated band (the first return "
                 "forecaster of CHAINCAST_FORECASTS)", ["symbol", "band"])
# Labels: symbol and forecaster (target:h{horizon}), both from the configured sets.
VOLATILITY_FORECAST = Gauge("chaincast_forecast_volatility", "Latest realised-volatility forecast (per-bar log "
                            "return units) and its calibrated band", ["symbol", "forecaster", "band"])
BAND_SCALE = Gauge("chaincast_band_scale", "Live conformal stretch of the q10..q90 band around q50 (1 = the "
                   "model's own band)", ["symbol", "forecaster"])
DUPLICATES = Counter("chaincast_duplicate_trades_total",
                     "Trades already folded in (redelivered after a crash, a reconnect's overlap): counted, "
                     "not dead-lettered", ["symbol"])
BAR_TO_REDIS = Histogram(
    "chaincast_bar_to_redis_seconds",
    "Bar close (the closing trade's batch reaching the worker) to the prediction written in Redis",
    buckets=LATENCY_BUCKETS,
)
FORECAST_STAGE = Histogram(
    "chaincast_forecast_stage_seconds",
    "Where a batch's forecasts spent their time, wall clock, once per batch that forecast: queued (the newest "
    "message's producer timestamp to the batch taken: producer, broker, fetch, hand-off to the agent; clocks of "
    "one host), fold (the batch's decode, bar fold, window and features), inference, redis (calibration and "
    "the Redis write)",
    ["stage"], buckets=LATENCY_BUCKETS,
)
GC_PAUSE = Histogram("chaincast_gc_pause_seconds", "Garbage-collector pauses of the event loop, by generation "
                     "(2: a full collection)", ["generation"], buckets=LATENCY_BUCKETS)
HEAP_TRIM = Histogram("chaincast_heap_trim_seconds", "Returning the heap's freed pages to the operating system "
                      "(stream.heap, in a thread beside the event loop)", buckets=LATENCY_BUCKETS)
INFERENCE = Histogram("chaincast_inference_seconds", "onnxruntime inference per batch", buckets=LATENCY_BUCKETS)
MODEL_INFO = Gauge("chaincast_model_info", "Serving model (value 1)", ["name", "version", "family"])
MODEL_LOADED_AT = Gauge("chaincast_model_loaded_timestamp_seconds", "When the serving model was loaded", ["name"])
MODELS_REFUSED = Counter("chaincast_models_refused_total", "Model updates refused by the predict agent", ["name"])

# The broker as each process sees it (stream.health.broker_reachable, probed every few seconds by the
# worker and by every Publisher): the Kafka clients reconnect by themselves, with backoff; these say
# when they had to. Exported by the worker, the producers and the retrainer alike.
BROKER_UP = Gauge("chaincast_broker_up", "1 while a bootstrap broker accepts connections (probed every 5 s), else 0")
BROKER_RECONNECTS = Counter("chaincast_broker_reconnects_total",
                            "Times the broker was reachable again after it had been lost (the Kafka clients "
                            "reconnect with backoff)")


def reason_kind(reason: str) -> str:
    """A bounded metric label from a free-text reason: the text before the first colon.

    >>> reason_kind("invalid: price must be finite")
    'invalid'
    """
    return reason.split(":", 1)[0][:40]

# Hot swap (stream.model_slot) and live scoring (stream.agents.score). Version labels stay
# bounded: the scorer keeps (and exports) only the last few versions per symbol.
MODEL_SWAP = Histogram(
    "chaincast_model_swap_seconds", "ModelUpdate created (announce) to the worker serving it",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
)
LIVE_MAE = Gauge("chaincast_live_mae", "Rolling live MAE of realised predictions (in the forecaster's target units)",
                 ["symbol", "forecaster", "version"])
LIVE_SKILL = Gauge("chaincast_live_skill", "Rolling live skill vs persistence (1 - MAE/MAE_persistence)",
                   ["symbol", "forecaster", "version"])
LIVE_COVERAGE = Gauge("chaincast_live_coverage_80", "Rolling share of realised targets inside the served "
                      "(calibrated) q10..q90 band", ["symbol", "forecaster", "version"])
LIVE_SCORED = Counter("chaincast_live_scored_total", "Predictions joined with their realised bar", ["symbol"])
RETRAIN_REQUESTS = Counter("chaincast_retrain_requests_total", "Retrain-now requests sent by the scorer", ["symbol"])

# The retrainer (consumers.retrainer).
RETRAIN_RUNS = Counter("chaincast_retrain_runs_total", "Retraining rounds finished", ["trigger"])
RETRAIN_SECONDS = Histogram("chaincast_retrain_seconds", "One retraining round: train, score, export",
                            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600))
PROMOTIONS = Counter("chaincast_promotions_total", "Models promoted to champion", ["kind"])
REFUSALS = Counter("chaincast_retrain_refusals_total", "Challengers not promoted, by reason", ["reason"])
VAL_MAE = Gauge("chaincast_validation_mae", "MAE on the latest validation slice", ["role"])
VAL_SKILL = Gauge("chaincast_validation_skill", "Skill vs persistence on the latest validation slice", ["role"])
RETRAIN_HISTORY = Gauge("chaincast_retrain_history_bars", "Bars held by the retrainer", ["symbol"])
RETRAIN_ACTIVE = Gauge("chaincast_retrain_in_progress", "1 while a challenger is being trained")

# Sampled by stream.lag on a timer; labels are the worker's assigned partitions (bounded by config).
CONSUMER_LAG = Gauge("chaincast_consumer_lag_messages", "Fetch high-water mark minus the consumer position",
                     ["topic", "partition"])
CONSUMER_POSITION = Gauge("chaincast_consumer_position", "Consumer position (next offset to fetch)",
                          ["topic", "partition"])
CONSUMER_HIGHWATER = Gauge("chaincast_consumer_highwater", "Fetch high-water mark", ["topic", "partition"])
CONSUMER_COMMIT_LAG = Gauge("chaincast_consumer_commit_lag_messages",
                            "Fetch high-water mark minus the last committed offset", ["topic", "partition"])
FETCH_WAIT = Gauge("chaincast_fetch_wait_ms", "The worker's consumer fetch wait (on the embedded broker it "
                   "grows with the fetched partitions' size: stream.kafka_options.embedded_fetch_wait_ms)")
MODEL_AGE = Gauge("chaincast_model_age_seconds", "Age of the serving model (now minus its card's created_at)",
                  ["name"])

# Fee forecasts (stream.agents.fees). Labels: target (2), horizon (configured set), chain id.
FEE_BASE_FEE = Gauge("chaincast_fee_base_fee_gwei", "Base fee of the latest canonical block", ["chain"])
FEE_FORECAST = Gauge("chaincast_fee_forecast_gwei", "Latest base-fee forecast and its band, h blocks ahead",
                     ["chain", "horizon", "band"])
FEE_GAS_RATIO_FORECAST = Gauge("chaincast_fee_gas_ratio_forecast", "Latest fullness forecast, h blocks ahead",
                               ["chain", "horizon"])
FEE_PREDICTIONS = Counter("chaincast_fee_predictions_total", "Fee forecasts written", ["target"])
FEE_RETRACTIONS = Counter("chaincast_fee_retractions_total", "Fee forecasts withdrawn after a reorg")
FEE_LIVE_MAE = Gauge("chaincast_fee_live_mae", "Rolling live MAE of the served fee model and of its reference",
                     ["target", "horizon", "model"])
FEE_LIVE_SKILL = Gauge("chaincast_fee_live_skill", "Rolling live skill of the served fee model over its reference "
                       "(EIP-1559 for the base fee, persistence for fullness)", ["target", "horizon"])
FEE_LIVE_COVERAGE = Gauge("chaincast_fee_live_coverage", "Share of realised values inside the q10..q90 band",
                          ["target", "horizon"])
# The transaction-value agent (stream.agents.txs); labels bounded by the configured model name.
TX_FORECASTS = Counter("chaincast_tx_forecasts_total", "Transactions forecast before their value was revealed")
TX_LIVE_MAE = Gauge("chaincast_tx_live_mae", "Rolling live MAE of the transaction-value forecast (log value)",
                    ["role"])  # role: model or constant
TX_LIVE_SKILL = Gauge("chaincast_tx_live_skill", "Rolling live skill of the transaction-value forecast vs the "
                      "constant (training median): 1 - MAE/MAE_constant")
TX_ALERTS = Counter("chaincast_tx_alerts_total", "Transactions above their calibrated bound (alerts sent)")
TX_RETRACTED = Counter("chaincast_tx_retracted_total", "Transaction forecasts retracted after a reorg")

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
FORECAST = Gauge("chaincast_forecast_price", "Latest forecast price and band", ["symbol", "band"])
BAR_TO_REDIS = Histogram(
    "chaincast_bar_to_redis_seconds",
    "Bar close (event arrival at the predict agent) to the prediction written in Redis",
    buckets=LATENCY_BUCKETS,
)
INFERENCE = Histogram("chaincast_inference_seconds", "onnxruntime inference per batch", buckets=LATENCY_BUCKETS)
MODEL_INFO = Gauge("chaincast_model_info", "Serving model (value 1)", ["name", "version", "family"])
MODEL_LOADED_AT = Gauge("chaincast_model_loaded_timestamp_seconds", "When the serving model was loaded", ["name"])
MODELS_REFUSED = Counter("chaincast_models_refused_total", "Model updates refused by the predict agent", ["name"])


def reason_kind(reason: str) -> str:
    """A bounded metric label from a free-text reason: the text before the first colon.

    >>> reason_kind("invalid: price must be finite")
    'invalid'
    """
    return reason.split(":", 1)[0][:40]

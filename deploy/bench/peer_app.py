"""The peer's process: 1-minute OHLCV bars with Quix Streams (``python -m chaincast.deploy.bench.peer_app``).

A Quix Streams ``Application`` reads the TradeBatch messages, expands them into
trades, stamps each with its event time, folds a tumbling 1-minute window per
market (``reduce`` then ``final``: a bar is emitted when the first trade of a
later minute arrives, as chaincast closes bars), sends each bar to a topic and
appends it to a Redis stream, the observation point the bench reads with
``XREAD BLOCK`` (keys from ``stream.redis_layout`` under a prefix of its own).

It imports only what it needs (Quix Streams, redis, the settings and the Redis
layout), so its RSS is the peer's own, not chaincast's.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis

from chaincast.models.logs import setup_logging
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.settings import Settings, load_settings

STREAM_MAXLEN = 100_000


def peer_prefix(settings: Settings) -> str:
    return f"{settings.redis_prefix}peer:"


def first_bar(trade: dict[str, Any]) -> dict[str, Any]:
    p, q = trade["price"], trade["qty"]
    return {"open": p, "high": p, "low": p, "close": p, "volume": q, "trades": 1,
            "buy_volume": q if trade["side"] == "buy" else 0.0, "notional": p * q}


def fold(bar: dict[str, Any], trade: dict[str, Any]) -> dict[str, Any]:
    """One trade into the window's bar (the same fields as chaincast's ``OpenBar``).

    >>> t = lambda p, s: {"price": p, "qty": 1.0, "side": s}
    >>> b = fold(first_bar(t(10.0, "buy")), t(12.0, "sell"))
    >>> b["open"], b["high"], b["close"], b["trades"], b["buy_volume"]
    (10.0, 12.0, 12.0, 2, 1.0)
    """
    p, q = trade["price"], trade["qty"]
    bar["high"] = max(bar["high"], p)
    bar["low"] = min(bar["low"], p)
    bar["close"] = p
    bar["volume"] += q
    bar["trades"] += 1
    if trade["side"] == "buy":
        bar["buy_volume"] += q
    bar["notional"] += p * q
    return bar


def run_app(settings: Settings, topic_in: str, topic_out: str, group: str, state_dir: Path, first_out: Path,
            fetch_wait_ms: int | None) -> None:
    """The peer process: runs until SIGTERM. ``fetch_wait_ms``: the consumer's fetch wait, given on
    the embedded broker only (the same short wait chaincast's workers use there, since that broker
    answers a fetch only when its wait expires); None keeps the client's defaults, as on Kafka."""
    from quixstreams import Application
    from quixstreams.models.topics import TopicConfig

    consumer = {"fetch.wait.max.ms": fetch_wait_ms} if fetch_wait_ms is not None else {}
    app = Application(broker_address=settings.kafka_bootstrap_servers, consumer_group=group,
                      auto_offset_reset="earliest", state_dir=str(state_dir), consumer_extra_config=consumer,
                      loglevel="WARNING", auto_create_topics=True)
    trades = app.topic(topic_in, key_deserializer="str", value_deserializer="json")
    bars = app.topic(topic_out, key_serializer="str", value_serializer="json")
    if settings.embedded_broker:  # the embedded broker describes no retention; Quix derives its changelogs' from it
        known = trades.broker_config
        trades.broker_config = TopicConfig(num_partitions=known.num_partitions,
                                           replication_factor=known.replication_factor or 1,
                                           extra_config={**known.extra_config, "retention.ms": "-1",
                                                         "retention.bytes": "-1"})
    layout = RedisLayout(peer_prefix(settings))
    client = redis.Redis.from_url(settings.redis_url or "", decode_responses=True)
    started: list[float] = []

    def mark_first(_value: object) -> None:
        if not started:
            started.append(time.time())
            first_out.write_text(json.dumps({"first": started[0]}))

    def observe(bar: dict[str, Any], key: str, _ts: int, _headers: object) -> None:
        symbol = key.split(":", 1)[1]
        client.xadd(layout.history(symbol), {"t": repr(time.time()), "close": repr(bar["close"])},
                    id=f"{bar['ts']}-0", maxlen=STREAM_MAXLEN, approximate=True)

    sdf = app.dataframe(trades)
    sdf = sdf.update(mark_first)
    sdf = sdf.apply(lambda batch: batch["trades"], expand=True)
    sdf = sdf.set_timestamp(lambda trade, _key, _ts, _headers: trade["ts_event"])
    sdf = sdf.tumbling_window(timedelta(minutes=1)).reduce(fold, first_bar).final()
    sdf = sdf.apply(lambda w: {**w["value"], "ts": w["start"], "vwap": w["value"]["notional"] / w["value"]["volume"]})
    sdf = sdf.update(observe, metadata=True)
    sdf.to_topic(bars)
    app.run()


def main() -> None:
    """``python -m chaincast.deploy.bench.peer_app TOPIC_IN TOPIC_OUT GROUP STATE_DIR FIRST_OUT [--fetch-wait-ms N]``
    (started by the bench)."""
    parser = argparse.ArgumentParser(description="The Quix Streams peer of `chaincast bench` (started by it).")
    for arg in ("topic_in", "topic_out", "group", "state_dir", "first_out"):
        parser.add_argument(arg)
    parser.add_argument("--fetch-wait-ms", type=int, default=None)
    args = parser.parse_args()
    setup_logging()
    run_app(load_settings(), args.topic_in, args.topic_out, args.group, Path(args.state_dir), Path(args.first_out),
            args.fetch_wait_ms)


if __name__ == "__main__":
    main()

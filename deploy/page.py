"""The live page's data: per symbol the last forecasts as chart points, the live score, the models.

The page itself (``page.html``) is served by the HTTP API (``deploy/api.py``) at ``/``; after
the user logs in with an API token it opens the API's ``/v1/live`` websocket and receives one
``snapshot`` a second: per symbol the last ``points`` predictions, the live score and the
serving model; and for the chain ``CHAINCAST_FEE_CHAIN_ID`` the latest fee forecasts, their
live scores and the recent base-fee forecasts from the fee history (retracted ones left out).
It draws price, forecast and its q10..q90 band as SVG, and the base fee with its forecast band
h blocks ahead; it needs nothing from the internet (keys from ``stream.redis_layout``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from chaincast.stream.forecasts import ForecastReader
from chaincast.stream.records import Prediction
from chaincast.stream.redis_layout import RedisLayout

PAGE = Path(__file__).parent / "page.html"  # read per request: edits show on reload


@dataclass(frozen=True)
class Point:
    bar_ts: int  # ms, open of the bar the forecast saw
    target_ts: int  # ms, the bar the forecast is for
    price: float
    price_hat: float
    lo: float  # price * exp(q10)
    hi: float  # price * exp(q90)
    version: str


def point(p: Prediction) -> Point:
    """One forecast as chart coordinates.

    >>> p = point(Prediction(exchange="binance", symbol="BTCUSDT", bar_ts=60000, horizon=1, y_hat=0.01, q10=-0.01,
    ...     q50=0.01, q90=0.02, price=100, price_hat=101, model_name="m", model_version="abc", created_at=0,
    ...     latency_ms=0))
    >>> (p.target_ts, round(p.lo, 3), round(p.hi, 3))
    (120000, 99.005, 102.02)
    """
    return Point(p.bar_ts, p.target_ts, p.price, p.price_hat, p.price * math.exp(p.q10), p.price * math.exp(p.q90),
                 p.model_version)


async def snapshot(reader: ForecastReader, points: int = 120) -> dict:
    """What the page shows, read in a few round trips."""
    settings = reader.settings
    symbols = settings.symbols
    scores = await reader.scores(symbols)
    out = {}
    for sym, score in zip(symbols, scores):
        history = await reader.history(sym, limit=points)
        out[sym] = {"points": [point(p).__dict__ for p in history], "score": score or None}
    models = await reader.models()
    model = next((m for m in models if m.name == settings.model_name), None)
    keys, chain = RedisLayout.of(settings), settings.fee_chain_id
    pipe = reader.client.pipeline(transaction=False)
    pipe.hgetall(keys.fee_latest(chain))
    pipe.hgetall(keys.fee_score(chain))
    # every fee forecast is (targets x horizons) entries: read enough for `points` blocks of each
    pipe.xrevrange(keys.fee_history(chain), count=points * 2 * len(settings.fee_horizons))
    fee_latest, fee_score, fee_history = await pipe.execute()
    fees = {"chain_id": chain, "latest": fee_latest or None, "score": fee_score or None,
            "points": [p.__dict__ for p in fee_points([f for _, f in reversed(fee_history)])]}
    return {"model": {"name": settings.model_name,
                      **({"version": model.version, "family": model.family} if model else {})},
            "symbols": out, "fees": fees}


@dataclass(frozen=True)
class FeePoint:
    block: int  # the block the forecast saw
    target_block: int  # block + horizon
    horizon: int
    base_fee: float  # gwei, of ``block``
    forecast: float  # gwei
    lo: float
    hi: float


def fee_points(entries: list[dict[str, str]]) -> list[FeePoint]:
    """Base-fee forecasts of the history stream, oldest first, without the retracted ones.

    >>> e = {"target": "base_fee", "block": "10", "horizon": "5", "block_hash": "0xa", "base_fee_gwei": "20.0",
    ...      "forecast_gwei": "21.0", "forecast_q10_gwei": "19.0", "forecast_q90_gwei": "23.0", "retracted": "False"}
    >>> [p.target_block for p in fee_points([e, {**e, "block": "11"}, {**e, "block": "11", "retracted": "True"}])]
    [15]
    """
    withdrawn = {(e.get("block"), e.get("block_hash")) for e in entries if e.get("retracted") == "True"}
    out = []
    for e in entries:
        if e.get("target") != "base_fee" or e.get("retracted") == "True" or (e.get("block"), e.get("block_hash")) \
                in withdrawn:
            continue
        try:
            block, horizon = int(e["block"]), int(e["horizon"])
            out.append(FeePoint(block, block + horizon, horizon, float(e["base_fee_gwei"]), float(e["forecast_gwei"]),
                                float(e["forecast_q10_gwei"]), float(e["forecast_q90_gwei"])))
        except (KeyError, ValueError):
            continue  # an entry of another schema
    return out

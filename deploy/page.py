"""The live page's data: per symbol the last forecasts as chart points, the live score, the models.

Per symbol: the return forecaster's points (price, forecast and band) and, for each volatility
forecaster of ``CHAINCAST_FORECASTS``, its points (forecast volatility, the calibrated band, and
the volatility realised since, from the closes the forecasts started from) with its live score.

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
from chaincast.stream.records import Prediction, parse_forecaster
from chaincast.stream.redis_layout import RedisLayout
from chaincast.stream.scoring import realise

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


@dataclass(frozen=True)
class VolPoint:
    bar_ts: int
    target_ts: int
    forecast: float  # realised volatility of the next h one-bar log returns (per-bar log-return units)
    lo: float  # calibrated q10
    hi: float  # calibrated q90
    realised: float | None  # what it turned out to be; None until the h bars closed (or across a gap)
    version: str


def vol_points(history: list[Prediction]) -> list[VolPoint]:
    """Volatility forecasts, oldest first, each with the volatility realised since (from the forecasts' own
    starting closes, so it needs no other key).

    >>> p = lambda ts, price: Prediction(exchange="binance", symbol="BTCUSDT", bar_ts=ts, horizon=1,
    ...     target="volatility", y_hat=0.01, q10=0.005, q50=0.01, q90=0.02, price=price, model_name="m",
    ...     model_version="v", created_at=0, latency_ms=0)
    >>> [(v.target_ts, v.realised and round(v.realised, 4)) for v in vol_points([p(0, 100.0), p(60000, 101.0)])]
    [(60000, 0.01), (120000, None)]
    """
    closes = {p.bar_ts: p.price for p in history}
    return [VolPoint(p.bar_ts, p.target_ts, p.y_hat, p.q10, p.q90, realise(p.target, p.horizon, closes, p.bar_ts),
                     p.model_version) for p in history]


async def snapshot(reader: ForecastReader, points: int = 120) -> dict:
    """What the page shows, read in a few round trips."""
    settings = reader.settings
    symbols = settings.symbols
    served = [(f, parse_forecaster(f)[0]) for f in reader.forecasters]
    returns = next((f for f, target in served if target == "log_return"), None)
    vols = [f for f, target in served if target == "volatility"]
    scores = await reader.scores(symbols, forecaster=returns) if returns else [{} for _ in symbols]
    vol_scores = {f: await reader.scores(symbols, forecaster=f) for f in vols}
    out = {}
    for i, (sym, score) in enumerate(zip(symbols, scores)):
        history = await reader.history(sym, limit=points, forecaster=returns) if returns else []
        out[sym] = {"points": [point(p).__dict__ for p in history], "score": score or None,
                    "volatility": [{"forecaster": f, "score": vol_scores[f][i] or None,
                                    "points": [v.__dict__ for v in vol_points(
                                        await reader.history(sym, limit=points, forecaster=f))]} for f in vols]}
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

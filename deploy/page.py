"""The live page's data: per symbol the last forecasts as chart points, the live score, the models.

The page itself (``page.html``) is served by the HTTP API (``deploy/api.py``) at ``/``; after
the user logs in with an API token it opens the API's ``/v1/live`` websocket and receives one
``snapshot`` a second. It draws price, forecast and its q10..q90 band as SVG and needs
nothing from the internet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from chaincast.stream.forecasts import ForecastReader
from chaincast.stream.records import Prediction

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
    symbols = reader.settings.symbols
    scores = await reader.scores(symbols)
    out = {}
    for sym, score in zip(symbols, scores):
        history = await reader.history(sym, limit=points)
        out[sym] = {"points": [point(p).__dict__ for p in history], "score": score or None}
    models = await reader.models()
    model = next((m for m in models if m.name == reader.settings.model_name), None)
    return {"model": {"name": reader.settings.model_name,
                      **({"version": model.version, "family": model.family} if model else {})},
            "symbols": out}

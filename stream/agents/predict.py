"""The predict agent: ``bars.1m`` -> ONNX forecast -> Redis + ``predictions``.

Bars that arrive together (several symbols closing the same minute, or a
replay at speed) are forecast in one inference and written in one Redis
pipeline. The model is read once per batch from the slot, so a hot swap never
splits a batch between versions.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

from pydantic import ValidationError

from chaincast.stream.metrics import BAR_TO_REDIS, FORECAST, INFERENCE, LAST_CLOSE, PREDICTIONS
from chaincast.stream.predict import MAX_ABS_OUTPUT, Ready, forecast, history_size, push, ready
from chaincast.stream.records import Bar, market_key

if TYPE_CHECKING:
    from chaincast.stream.context import Streams

log = logging.getLogger(__name__)
SOURCE = "stream.predict"


def register(s: "Streams") -> None:
    window = s.settings.window
    size = history_size(window)

    @s.app.agent(s.bars, name="predict")
    async def predict(stream):  # noqa: ANN001 - a faust stream
        await s.slot.ready.wait()  # hold bars (not drop them) until a model serves
        async for values in stream.take(256, within=0.002):
            arrived = time.perf_counter()
            batch: list[Ready] = []
            touched: dict[str, list[list[float]]] = {}
            for raw in values:
                try:
                    bar = Bar.loads(raw)
                except ValidationError as exc:
                    await s.dead_letter(SOURCE, raw, f"invalid: {exc.errors()[0]['msg']}",
                                        topic=s.settings.topic_bars)
                    continue
                key = market_key(bar.exchange, bar.symbol)
                rows = touched.get(key)
                if rows is None:
                    rows = touched[key] = s.windows.get(key) or []
                if not push(rows, bar, size):
                    continue  # older than the window: a stale redelivery
                LAST_CLOSE.labels(bar.symbol).set(bar.close)
                if (r := ready(bar, rows, window, arrived)) is not None:
                    batch.append(r)
            for key, rows in touched.items():  # one changelog write per market per batch
                s.windows[key] = rows
            if not batch:
                continue
            model = s.slot.current
            with INFERENCE.time():
                preds, refused = forecast(model, batch)
            for bar in refused:
                await s.dead_letter(SOURCE, bar.dumps(), f"model_output: not finite or beyond "
                                    f"{MAX_ABS_OUTPUT} from {model.version}", topic=s.settings.topic_bars)
            await s.sink.write(preds)
            done = time.perf_counter()
            for p in preds:
                BAR_TO_REDIS.observe(done - arrived)
                PREDICTIONS.labels(p.symbol).inc()
                if p.price_hat is not None:  # a return forecast: the price band
                    FORECAST.labels(p.symbol, "mid").set(p.price_hat)
                    FORECAST.labels(p.symbol, "q10").set(p.price * math.exp(p.q10))
                    FORECAST.labels(p.symbol, "q90").set(p.price * math.exp(p.q90))
                await s.predictions.send(key=market_key(p.exchange, p.symbol).encode(), value=p.dumps())

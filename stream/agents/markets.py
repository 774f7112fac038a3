"""The markets agent: ``ticks.trades`` -> 1-minute bars -> forecasts, in one task (one broker hop).

The worker that closes a bar forecasts it at once from the window kept next to
the bar state (``stream.market.MarketState``: two changelogged table entries
per market, the bar state and the window), writes the forecasts to Redis and
``predictions``, and then publishes the bar to ``bars.1m`` for the retrainer,
the scorer and subscribers (after the forecast: the bar's send is not on its
forecast's path).

Delivery (DESIGN.md "Reliability rules"):
- a record that cannot be used is dead-lettered with its reason; duplicates
  (a redelivery after a crash) are only counted; the market goes on;
- the markets' live state stays in the worker (``Markets``) and is written
  behind (``stream.batches``): a batch's forecasts reach Redis in the batch,
  and a write beside the next batches confirms every send (bars, predictions,
  dead letters), then records each market those batches touched once (its
  window first, if a bar closed: ``stream.market``), then acknowledges them.
  A worker killed in between redoes them from the last recorded state:
  identical bars, the same forecasts (Redis keeps one history entry per bar
  and horizon);
- anything else (broker, Redis beyond its retry budget, a bug) stops the
  worker before its messages are acknowledged (``stream.failure``).

Bars that close together (several markets in one batch, a replay at speed)
are forecast in one inference per served forecaster (``CHAINCAST_FORECASTS``)
and written in one Redis pipeline; the models are read once per batch, so a hot
swap never splits a batch between versions. Trades are held until the default
forecaster serves; the others join as their first model arrives
(``stream.model_slot.ModelSlots``). Each band is calibrated live
(``MarketState.calibrate``, in bar order per market) before it is written.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from chaincast.stream.bars import Refused, parse_trades
from chaincast.stream.batches import each_batch
from chaincast.stream.bounds import Bounds
from chaincast.stream.chain import with_chain
from chaincast.stream.market import MarketState
from chaincast.stream.metrics import (
    BAND_SCALE,
    BAR_TO_REDIS,
    BARS,
    DUPLICATES,
    FORECAST,
    FORECAST_STAGE,
    INFERENCE,
    LAST_CLOSE,
    PREDICTIONS,
    TRADE_MESSAGES,
    TRADES,
    VOLATILITY_FORECAST,
)
from chaincast.stream.predict import MAX_ABS_OUTPUT, Ready, forecast, history_size, ready
from chaincast.stream.records import Bar, Prediction, forecaster_key, market_key

if TYPE_CHECKING:
    from chaincast.stream.context import Streams

log = logging.getLogger(__name__)
SOURCE = "stream.markets"
CHAIN_CATCH_UP_S = 30.0
BATCH = 500  # messages per batch at most (what has arrived: stream.batches)
WRITE_EVERY_S = 1.0  # the write behind begins at most this often (a busy market's state: once per interval), or when the hold is full
QUEUED, FOLD, INFERRED, WRITTEN = (FORECAST_STAGE.labels(stage) for stage in ("queued", "fold", "inference", "redis"))


class Markets:
    """The live state of this worker's markets, written behind to the ``windows`` and ``markets`` tables.

    A batch folds into these states and leaves here what it sent and which markets it
    changed; ``behind`` (called between batches, ``stream.batches``) takes those at once and
    returns the write that confirms the sends, then records each changed market. After a
    rebalance every message has been acknowledged, so every state is in the table: the states
    are dropped and read again from the table (recovered from the changelog if another worker
    held the market meanwhile).
    """

    def __init__(self, s: "Streams") -> None:
        self.s = s
        # What every batch folds and forecasts by, fixed for the worker's life:
        self.bounds = Bounds.from_settings(s.settings)
        self.symbols = frozenset(s.settings.symbols)
        self.window = s.settings.window
        specs = s.settings.forecast_specs
        self.size = history_size(s.settings.window, max(spec.horizon for spec in specs))
        # The price gauge follows one return forecaster (the first configured): its labels carry no horizon.
        self.price_forecaster = next((forecaster_key(sp.target, sp.horizon) for sp in specs
                                      if sp.target == "log_return"), None)
        self.states: dict[bytes, MarketState] = {}
        self.changed: set[bytes] = set()  # markets changed since the last ``behind``
        self.sent: list[Awaitable[Any]] = []  # broker acks to confirm before those markets are recorded

    def get(self, key: bytes, exchange: str, symbol: str) -> MarketState:
        if (state := self.states.get(key)) is None:
            state = self.states[key] = MarketState.load(self.s.markets.get(key), exchange, symbol,
                                                         self.s.windows.get(key))
        return state

    def behind(self) -> Awaitable[None]:
        sent, self.sent = self.sent, []
        states = [(key, self.states[key]) for key in self.changed]
        self.changed = set()
        # Snapshots, taken now: later batches go on changing the live states while the write waits.
        windows = {key: state.window_entry() for key, state in states if state.window_changed}
        for _, state in states:
            state.window_changed = False
        return self.write(sent, windows, {key: state.bar_entry() for key, state in states})

    async def write(self, sent: list[Awaitable[Any]], windows: dict[bytes, dict], bars: dict[bytes, dict]) -> None:
        """Confirm the sends, then record the windows, then (once those are on the broker) the bar
        states: a recovered window is never older than its bar state (``MarketState.window_entry``)."""
        if sent:
            await asyncio.gather(*sent)
        await self.s.record(self.s.windows, windows)
        await self.s.record(self.s.markets, bars)

    def done(self, batch: "MarketBatch") -> None:
        """What the batch sent and changed, for the next ``behind``."""
        self.sent += batch.sent
        self.changed.update(batch.states)  # in place: ``|=`` with a keys view copies the whole set per batch

    def drop(self) -> None:
        """Forget the states (after a rebalance, when every message is acknowledged, so every state written)."""
        if self.changed:  # only when the worker stops mid-rebalance: Faust no longer waits for the acks
            log.warning("rebalance with %d markets not yet written; keeping them", len(self.changed))
        self.states = {key: state for key, state in self.states.items() if key in self.changed}


class MarketBatch:
    """One batch of trade messages folded into the markets' state: what to send, what to forecast."""

    def __init__(self, s: "Streams", markets: Markets) -> None:
        self.s = s
        self.markets = markets
        self.arrived = time.perf_counter()
        self.taken = time.time()  # wall clock, against the messages' producer timestamps
        self.states: dict[bytes, MarketState] = {}  # the live states this batch touched, by market key
        self.sent: list[Awaitable[Any]] = []  # broker acks to confirm before the states are recorded
        self.closed: list[tuple[bytes, Bar]] = []  # the bars the batch closed, to publish after the forecasts
        self.ready: list[Ready] = []  # closed bars with a full window behind them

    async def dead_letter(self, raw: bytes | str | None, reason: str, key: bytes | None) -> None:
        self.sent.append(await self.s.dead_letter(SOURCE, raw, reason, topic=self.s.settings.topic_trades, key=key))

    async def add(self, key: bytes | None, raw: bytes | None) -> None:
        s = self.s
        try:
            trades = parse_trades(raw, key, self.markets.symbols, s.settings.max_message_bytes)
        except Refused as exc:
            await self.dead_letter(raw, str(exc), key)
            return
        assert key is not None  # parse_trades checked it is the market key
        if (state := self.states.get(key)) is None:
            state = self.states[key] = self.markets.get(key, trades[0].exchange, trades[0].symbol)
        folded = state.fold(trades, self.markets.bounds)
        symbol = state.bars.symbol
        for trade, reason in folded.refused:
            await self.dead_letter(trade.dumps(), reason, key)
        if folded.duplicates:
            DUPLICATES.labels(symbol).inc(folded.duplicates)
        TRADES.labels(symbol).inc(len(trades) - folded.duplicates - len(folded.refused))
        for bar in folded.closed:
            bar = with_chain(bar, s.chain)
            self.closed.append((key, bar))
            # A redelivered bar (same minute as the last row) replaces it and is forecast again.
            if state.push(bar, self.markets.size) and (r := ready(bar, state.window, self.markets.window,
                                                                  self.arrived)):
                self.ready.append(r)

    async def publish(self) -> None:
        """Send the batch's closed bars to ``bars.1m`` (after the forecasts: a bar's send is not on
        its forecast's path; acks collected, confirmed by the write behind)."""
        for key, bar in self.closed:
            self.sent.append(await self.s.bars.send(key=key, value=bar.dumps()))
            BARS.labels(bar.symbol).inc()
            LAST_CLOSE.labels(bar.symbol).set(bar.close)

    async def forecast(self) -> None:
        """Forecast the ready bars, calibrate the bands, write Redis, send the predictions (acks collected)."""
        if not self.ready:
            return
        s = self.s
        folded = time.perf_counter()
        raw: list[Prediction] = []
        for model in s.slots.serving():  # one per forecaster (target, horizon) that has a model
            with INFERENCE.time():
                made, refused = forecast(model, self.ready)
            raw += made
            for bar in refused:
                await self.dead_letter(bar.dumps(), f"model_output: not finite or beyond {MAX_ABS_OUTPUT} "
                                       f"from {model.version}", bar_key(bar))
        inferred = time.perf_counter()
        preds = self.calibrate(raw)
        await s.sink.write(preds)
        done = time.perf_counter()
        FOLD.observe(folded - self.arrived)
        INFERRED.observe(inferred - folded)
        WRITTEN.observe(done - inferred)
        for p in preds:
            BAR_TO_REDIS.observe(done - self.arrived)
            PREDICTIONS.labels(p.symbol).inc()
            self.gauge(p)
            self.sent.append(await s.predictions.send(key=market_key(p.exchange, p.symbol).encode(),
                                                      value=p.dumps()))

    def calibrate(self, raw: list[Prediction]) -> list[Prediction]:
        """Each forecast with its calibrated band, realised and calibrated in bar order per market
        (``forecast`` keeps the ready bars' order, which is their closing order per market)."""
        by_bar = {(r.bar.exchange, r.bar.symbol, r.bar.ts): r for r in self.ready}
        out = []
        for p in raw:
            state = self.states[market_key(p.exchange, p.symbol).encode()]
            p = state.calibrate(p, by_bar[(p.exchange, p.symbol, p.bar_ts)].closes())
            BAND_SCALE.labels(p.symbol, forecaster_key(p.target, p.horizon)).set(
                state.bands[forecaster_key(p.target, p.horizon)].scale)
            out.append(p)
        return out

    def gauge(self, p: Prediction) -> None:
        fid = forecaster_key(p.target, p.horizon)
        if p.target == "volatility":  # per-bar log-return units, not a price
            for band, value in (("mid", p.y_hat), ("q10", p.q10), ("q90", p.q90)):
                VOLATILITY_FORECAST.labels(p.symbol, fid, band).set(value)
        elif p.price_hat is not None and fid == self.markets.price_forecaster:  # the return forecast: the price band
            FORECAST.labels(p.symbol, "mid").set(p.price_hat)
            FORECAST.labels(p.symbol, "q10").set(p.price * math.exp(p.q10))
            FORECAST.labels(p.symbol, "q90").set(p.price * math.exp(p.q90))


def bar_key(bar: Bar) -> bytes:
    return market_key(bar.exchange, bar.symbol).encode()


def register(s: "Streams") -> None:
    live = Markets(s)

    @s.app.on_partitions_revoked.connect
    async def drop(app: Any, revoked: Any, **_: Any) -> None:  # noqa: ARG001 - Faust's signal arguments
        live.drop()  # sent after Faust waited for every message to be acknowledged (so written)

    @s.app.agent(s.trades, name="markets")
    async def markets(stream):  # noqa: ANN001 - a faust stream
        try:  # bars join the chain features of their minute: catch up first, but never stall on it
            await asyncio.wait_for(s.chain_ready.wait(), CHAIN_CATCH_UP_S)
        except asyncio.TimeoutError:
            log.warning("chain blocks not caught up after %.0fs; bars start without them", CHAIN_CATCH_UP_S)
        await s.slots.ready.wait()  # hold trades (not drop them) until the default forecaster serves
        await each_batch(stream, BATCH, handle, SOURCE, behind=live.behind, every_s=WRITE_EVERY_S)

    async def handle(events: list) -> None:
        TRADE_MESSAGES.inc(len(events))
        batch = MarketBatch(s, live)
        for event in events:
            await batch.add(event.key, event.value)
        await batch.forecast()
        if batch.ready and (newest := max(event.message.timestamp or 0.0 for event in events)) > 0:
            QUEUED.observe(max(batch.taken - newest, 0.0))  # Faust's timestamps are seconds, the producer's
        await batch.publish()
        live.done(batch)

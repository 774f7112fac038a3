"""The bars agent: ``ticks.trades`` -> 1-minute bars on ``bars.1m`` (state in a changelogged table)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from chaincast.stream.bars import BarBuilder, Refused, parse_trades
from chaincast.stream.chain import with_chain
from chaincast.stream.metrics import BARS, TRADE_MESSAGES, TRADES

if TYPE_CHECKING:
    from chaincast.stream.context import Streams

log = logging.getLogger(__name__)
SOURCE = "stream.bars"
CHAIN_CATCH_UP_S = 30.0
BATCH = 500  # messages per batch at most
BATCH_WITHIN_S = 0.002  # and no longer than this after the first


def register(s: "Streams") -> None:
    symbols = frozenset(s.settings.symbols)
    max_bytes = s.settings.max_message_bytes

    @s.app.agent(s.trades, name="bars")
    async def bars(stream):  # noqa: ANN001 - a faust stream
        try:  # bars join the chain features of their minute: catch up first, but never stall on it
            await asyncio.wait_for(s.chain_ready.wait(), CHAIN_CATCH_UP_S)
        except asyncio.TimeoutError:
            log.warning("chain blocks not caught up after %.0fs; bars start without them", CHAIN_CATCH_UP_S)
        # Messages are folded in batches so that each market's state is written to its
        # changelog once per batch, not once per message.
        async for events in stream.take_events(BATCH, within=BATCH_WITHIN_S):
            TRADE_MESSAGES.inc(len(events))
            builders: dict[str, BarBuilder] = {}
            sent: list[asyncio.Future] = []
            for event in events:
                key, raw = event.key, event.value
                try:
                    trades = parse_trades(raw, key, symbols, max_bytes)
                except Refused as exc:
                    await s.dead_letter(SOURCE, raw, str(exc), topic=s.settings.topic_trades, key=key)
                    continue
                market = key.decode()  # parse_trades checked it is the market key
                if (builder := builders.get(market)) is None:
                    state = s.bar_state.get(market)
                    first = trades[0]
                    builder = BarBuilder.from_dict(state) if state else BarBuilder(first.exchange, first.symbol)
                    builders[market] = builder
                closed = []
                for trade in trades:
                    try:
                        closed += builder.add(trade)
                    except Refused as exc:
                        await s.dead_letter(SOURCE, trade.dumps(), str(exc), topic=s.settings.topic_trades, key=key)
                for bar in closed:
                    sent.append(await s.bars.send(key=key, value=with_chain(bar, s.chain).dumps()))
                TRADES.labels(builder.symbol).inc(len(trades))
                if closed:
                    BARS.labels(builder.symbol).inc(len(closed))
            # The state that consumed these trades is recorded only once the bars they closed are
            # acknowledged by the broker: a worker killed in between redoes the batch (identical
            # bars again) instead of remembering trades whose bars were never sent.
            if sent:
                await asyncio.gather(*sent)
            for market, builder in builders.items():
                s.bar_state[market] = builder.to_dict()

"""The bars agent: ``ticks.trades`` -> 1-minute bars on ``bars.1m`` (state in a changelogged table)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from stream.bars import BarBuilder, Refused, parse_trades
from stream.chain import with_chain
from stream.metrics import BARS, TRADE_MESSAGES, TRADES

if TYPE_CHECKING:
    from stream.app import Streams

log = logging.getLogger(__name__)
SOURCE = "stream.bars"


def register(s: "Streams") -> None:
    symbols = frozenset(s.settings.symbols)
    max_bytes = s.settings.max_message_bytes

    @s.app.agent(s.trades, name="bars")
    async def bars(stream):  # noqa: ANN001 - a faust stream
        await s.chain_ready.wait()  # bars join the chain features of their minute: catch up first
        async for key, raw in stream.items():
            TRADE_MESSAGES.inc()
            try:
                trades = parse_trades(raw, key, symbols, max_bytes)
            except Refused as exc:
                await s.dead_letter(SOURCE, raw, str(exc), topic=s.settings.topic_trades, key=key)
                continue
            market = key.decode()  # parse_trades checked it is the market key
            state = s.bar_state.get(market)
            first = trades[0]
            builder = BarBuilder.from_dict(state) if state else BarBuilder(first.exchange, first.symbol)
            closed = []
            for trade in trades:
                try:
                    closed += builder.add(trade)
                except Refused as exc:
                    await s.dead_letter(SOURCE, trade.dumps(), str(exc), topic=s.settings.topic_trades, key=key)
            # Bars go out before the state that consumed them is recorded (see stream.bars on redelivery).
            for bar in closed:
                await s.bars.send(key=key, value=with_chain(bar, s.chain).dumps())
            s.bar_state[market] = builder.to_dict()
            TRADES.labels(first.symbol).inc(len(trades))
            if closed:
                BARS.labels(first.symbol).inc(len(closed))

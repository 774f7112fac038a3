"""Property test: whatever arrives on the trades topic, the parser returns valid trades or a Refused
with a reason; no other exception ever reaches the agent."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from chaincast.stream.bars import Refused, parse_trades

SYMBOLS = frozenset({"BTCUSDT", "ETHUSDT"})
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=20))
trade = st.fixed_dictionaries(
    {},
    optional={"schema": scalars, "exchange": st.sampled_from(["binance", "", "x"]) | scalars,
              "symbol": st.sampled_from(["BTCUSDT", "ETHUSDT", "DOGEUSDT"]) | scalars,
              "trade_id": st.integers(-5, 10**20) | scalars, "price": scalars, "qty": scalars,
              "side": st.sampled_from(["buy", "sell", "hold"]) | scalars, "ts_event": scalars, "ts_ingest": scalars},
)
batch = st.fixed_dictionaries({"exchange": st.just("binance"), "symbol": st.sampled_from(["BTCUSDT", "XRPUSDT"]),
                               "trades": st.lists(trade, max_size=5)})


def check(raw: bytes, key: bytes | None) -> None:
    try:
        trades = parse_trades(raw, key, SYMBOLS, max_bytes=4096)
    except Refused as exc:
        assert str(exc).split(":")[0] in {"invalid", "unknown_symbol", "bad_key", "oversized"}
        return
    assert trades and all(t.symbol in SYMBOLS and t.price > 0 and t.qty > 0 for t in trades)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300), st.one_of(st.none(), st.binary(max_size=20)))
def test_arbitrary_bytes_are_refused_cleanly(raw, key):
    check(raw, key)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(trade, batch), st.sampled_from([b"binance:BTCUSDT", b"binance:ETHUSDT", b"", None]))
def test_almost_valid_json_is_accepted_or_refused_cleanly(value, key):
    check(json.dumps(value, allow_nan=True).encode(), key)

"""The Coinbase matches normaliser against a recorded real session (golden output)."""

from __future__ import annotations

import json

import pytest
from tests.producers.wire_recordings import RECORDINGS, golden, normalised

from chaincast.producers import coinbase
from chaincast.producers.venue import BadMessage, Control

MATCH = {"type": "match", "trade_id": 1568268, "side": "sell", "size": "450", "price": "0.791",
         "product_id": "SKL-USD", "sequence": 201390075, "time": "2021-04-17T16:43:37.121358Z"}


def test_recorded_session_matches_golden() -> None:
    recording, venue = RECORDINGS["coinbase"]
    assert [json.loads(json.dumps(o, sort_keys=True)) for o in normalised(recording, venue)] == golden("coinbase")


def test_match_side_is_the_makers() -> None:
    t = coinbase.normalise(MATCH, 3)
    assert (t.exchange, t.symbol, t.trade_id, t.price, t.qty) == ("coinbase", "SKL-USD", 1568268, 0.791, 450.0)
    assert t.side == "buy"  # the maker sold, so the taker bought
    assert t.ts_event == 1618677817121  # exact ms, no float rounding


def test_controls_and_refusals() -> None:
    assert coinbase.normalise({"type": "subscriptions", "channels": []}) == Control("ack")
    for bad, kind in [({**MATCH, "price": "0"}, "value"), ({**MATCH, "time": "yesterday"}, "field"),
                      ({**MATCH, "side": "up"}, "field"), ({"type": "error", "message": "x"}, "event")]:
        with pytest.raises(BadMessage) as err:
            coinbase.normalise(bad)
        assert err.value.kind == kind

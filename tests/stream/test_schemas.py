"""Published JSON Schemas describe the records as they travel; the `schema` version rule holds."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from chaincast.stream import records as r
from chaincast.stream.schemas import all_schemas, record_types

TRADE = r.Trade(exchange="binance", symbol="BTCUSDT", trade_id=7, price=28000.5, qty=0.01, side="buy", ts_event=1)
EXAMPLES: dict[str, r.Record] = {
    "Trade": TRADE,
    "TradeBatch": r.TradeBatch(exchange="binance", symbol="BTCUSDT", trades=[TRADE]),
    "ChainFeatures": r.ChainFeatures(blocks=5, base_fee_gwei=12.5, base_fee_change=-0.01, gas_utilisation=0.5,
                                     tx_count=900, value_eth=120.0),
    "Bar": r.Bar(exchange="binance", symbol="BTCUSDT", ts=60_000, open=1, high=2, low=0.5, close=1.5, volume=3,
                 trades=4, vwap=1.2),
    "Block": r.Block(chain_id=1, number=18_000_000, hash="0xab", parent_hash="0xaa", timestamp=1_700_000_000,
                     base_fee=2**70, gas_used=15_000_000, gas_limit=30_000_000, tx_count=150, value_wei_sum=10**24),
    "Tx": r.Tx(chain_id=1, block=18_000_000, timestamp=1_700_000_000, hash="0x1", **{"from": "0xf"}, to=None,
               value=10**21, nonce=3, type=2, max_fee_per_gas=3 * 10**10),
    "Prediction": r.Prediction(exchange="binance", symbol="BTCUSDT", bar_ts=60_000, horizon=1, y_hat=0.001, q10=-0.01,
                               q50=0.001, q90=0.01, price=28000, price_hat=28028, model_name="forecaster",
                               model_version="abc", created_at=1, latency_ms=2.5),
    "ModelUpdate": r.ModelUpdate(name="forecaster", version="abc", uri="file:///x.onnx", sha256="00" * 32,
                                 metrics={"mae": 0.1}),
    "Gap": r.Gap(exchange="binance", symbol="BTCUSDT", after_id=1, before_id=5, missing=3),
    "DeadLetter": r.DeadLetter(source="stream.bars", reason="malformed: x", raw="{", ts=1),
}


def test_every_schema_is_valid_and_carries_its_version() -> None:
    schemas = all_schemas()
    assert set(schemas) == set(record_types())
    for name, schema in schemas.items():
        Draft202012Validator.check_schema(schema)
        assert schema["$id"] == f"chaincast/{name}/v{r.SCHEMA_VERSION}"
        assert "schema" in schema["properties"]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_records_on_the_wire_validate_against_their_schema(name: str) -> None:
    validator = Draft202012Validator(all_schemas()[name])
    wire = json.loads(EXAMPLES[name].dumps())
    assert not list(validator.iter_errors(wire))
    required = all_schemas()[name].get("required", [])
    if required:  # and the schema can fail: a required field missing is an error
        broken = {k: v for k, v in wire.items() if k != required[0]}
        assert list(validator.iter_errors(broken))


def test_wei_amounts_are_decimal_strings_in_the_schema() -> None:
    assert all_schemas()["Block"]["properties"]["value_wei_sum"]["type"] == "string"


def test_additive_fields_are_ignored_and_newer_schemas_refused() -> None:
    wire = json.loads(TRADE.dumps())
    assert r.Trade.model_validate({**wire, "venue_extra": 1}) == TRADE  # a field added later: ignored
    with pytest.raises(ValidationError, match="newer than this reader"):
        r.Trade.model_validate({**wire, "schema": r.SCHEMA_VERSION + 1})
    assert r.Trade.model_validate({**wire, "schema": r.SCHEMA_VERSION}).schema_version == r.SCHEMA_VERSION

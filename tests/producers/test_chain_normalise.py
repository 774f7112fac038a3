"""The normaliser against recorded mainnet payloads (golden outputs) and against the
ways a payload can be broken."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from chaincast.producers.chain_normalise import MalformedPayload, normalise_block, normalise_tx, normalise_txs
from chaincast.stream.records import Block, Tx

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chain"

GOLDEN = {
    "02": dict(number=16_000_000, hash="0x3dc4ef568ae2635db1419c5fec55c4a9322c05302ae527cd40bff380c1d465dd",
               parent_hash="0x6f377dc6bd1f3e38b9ceb8c946a88c13211fa3f084622df3ee5cfcd98cc6bb16",
               timestamp=1_668_811_907, base_fee=11_130_414_489, gas_used=18_992_639, gas_limit=30_000_000,
               tx_count=211, value_wei_sum=220_561_879_143_488_192_250, priority_fee_median=4_631_394_207),
    "07": dict(number=16_000_005, hash="0x5091c926f7a92b5fefbbf29446e2ed792a6880298974e733ad49a9e5e8347b97",
               parent_hash="0xae4db4e8bb0c90cc150bad9576f0ce4d240ab5112edfd4f9b21cf9f7d06414ef",
               timestamp=1_668_811_967, base_fee=11_219_135_706, gas_used=18_044_940, gas_limit=30_000_000,
               tx_count=104, value_wei_sum=668_028_785_731_130_459_485, priority_fee_median=1_500_000_000),
    "08": dict(number=18_000_000, hash="0x95b198e154acbfc64109dfd22d8224fe927fd8dfdedfae01587674482ba4baf3",
               parent_hash="0x198723e0ddf20153951c6304093cbd97fd306c5db03287c5586c0430a986080d",
               timestamp=1_693_066_895, base_fee=21_721_091_641, gas_used=16_247_211, gas_limit=30_000_000,
               tx_count=94, value_wei_sum=39_932_166_995_932_352_441, priority_fee_median=300_000_000),
}


def payload(name: str) -> dict:
    pair = json.loads((FIXTURES / f"eth_getBlockByNumber_test_{name}.json").read_text())[0]
    return pair["response"]["result"]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_mainnet_block_normalises_exactly(name: str) -> None:
    block = normalise_block(payload(name), chain_id=1)
    assert block.model_dump(exclude={"schema_version", "chain_id", "reorged"}) == GOLDEN[name]
    assert block.chain_id == 1 and not block.reorged


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_block_roundtrips_the_wire_with_wei_as_strings(name: str) -> None:
    block = normalise_block(payload(name), chain_id=1)
    wire = json.loads(block.dumps())
    assert wire["value_wei_sum"] == str(GOLDEN[name]["value_wei_sum"])  # never a float
    assert Block.loads(block.dumps()) == block


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_transactions_keep_exact_wei_and_thesis_fields(name: str) -> None:
    raw = payload(name)
    block = normalise_block(raw, chain_id=1)
    txs, bad = normalise_txs(raw, block)
    assert bad == [] and len(txs) == block.tx_count
    assert sum(t.value for t in txs) == block.value_wei_sum
    for tx, src in zip(txs, raw["transactions"]):
        assert tx.hash == src["hash"] and tx.from_ == src["from"]
        assert tx.to == src["to"] and tx.nonce == int(src["nonce"], 16) and tx.type == int(src["type"], 16)
        assert tx.block == block.number and tx.block_hash == block.hash and tx.timestamp == block.timestamp
        assert Tx.loads(tx.dumps()) == tx


def test_contract_creation_has_no_recipient() -> None:
    raw = payload("07")
    txs, _ = normalise_txs(raw, normalise_block(raw, chain_id=1))
    creations = [t for t in txs if t.to is None]
    assert len(creations) == 1 and json.loads(creations[0].dumps())["to"] is None


def test_type2_fee_fields_are_exact() -> None:
    raw = payload("08")
    block = normalise_block(raw, chain_id=1)
    src = next(t for t in raw["transactions"] if t["type"] == "0x2")
    tx = normalise_tx(src, block)
    assert tx.max_fee_per_gas == int(src["maxFeePerGas"], 16)
    assert tx.max_priority_fee_per_gas == int(src["maxPriorityFeePerGas"], 16)
    assert tx.gas_price == int(src["gasPrice"], 16)


def test_hashes_only_block_counts_transactions_without_values() -> None:
    raw = copy.deepcopy(payload("02"))
    raw["transactions"] = [t["hash"] for t in raw["transactions"]]
    block = normalise_block(raw, chain_id=1)
    assert block.tx_count == 211 and block.value_wei_sum == 0 and block.priority_fee_median is None
    assert normalise_txs(raw, block) == ([], [])


def test_pre_london_block_has_no_base_fee() -> None:
    raw = copy.deepcopy(payload("02"))
    del raw["baseFeePerGas"]
    block = normalise_block(raw, chain_id=1)
    assert block.base_fee is None and block.priority_fee_median is None


def _broken(field: str, value: object) -> dict:
    raw = copy.deepcopy(payload("08"))
    if value is KeyError:
        del raw[field]
    else:
        raw[field] = value
    return raw


@pytest.mark.parametrize(("field", "value", "message"), [
    ("hash", KeyError, "hash: missing"),
    ("hash", "0x1234", "hash: '0x1234' is not a 32-byte hex hash"),
    ("number", "12", "number: '12' is not a hex quantity"),
    ("gasUsed", "0xnothex", "gasUsed: '0xnothex' is not a hex quantity"),
    ("timestamp", None, "timestamp: missing"),
    ("baseFeePerGas", "-0x1", "baseFeePerGas: '-0x1' is not a hex quantity"),
    ("transactions", "0xdead", "transactions: '0xdead' is not a list"),
    ("gasLimit", "0x0", "block: gas_limit"),
])
def test_broken_payloads_raise_clear_errors(field: str, value: object, message: str) -> None:
    with pytest.raises(MalformedPayload, match=message.replace("(", r"\(")[:40]):
        normalise_block(_broken(field, value), chain_id=1)


@pytest.mark.parametrize("raw", [None, [], "0x1", 7])
def test_null_or_non_object_block_is_refused(raw: object) -> None:
    with pytest.raises(MalformedPayload, match="block: "):
        normalise_block(raw, chain_id=1)


def test_a_bad_tx_value_breaks_the_block_sum() -> None:
    raw = copy.deepcopy(payload("08"))
    raw["transactions"][5]["value"] = "1.5"
    with pytest.raises(MalformedPayload, match=r"transactions\[5\]\.value"):
        normalise_block(raw, chain_id=1)


def test_one_bad_tx_is_refused_alone() -> None:
    raw = copy.deepcopy(payload("08"))
    block = normalise_block(raw, chain_id=1)
    raw["transactions"][3]["from"] = "0xnotanaddress"
    txs, bad = normalise_txs(raw, block)
    assert len(txs) == block.tx_count - 1
    assert len(bad) == 1 and bad[0][1].startswith("malformed tx: transactions[3].from:")

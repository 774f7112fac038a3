"""JSON-RPC block payloads -> Block and Tx records. Pure: no I/O, no web3.

Input is the ``result`` of ``eth_getBlockByNumber(n, true)`` exactly as the node
sent it (hex quantities, full transaction objects). Amounts stay exact ints.
Anything that does not parse raises ``MalformedPayload`` naming the field, so the
follower can dead-letter the raw payload with a reason a human can act on.

>>> block = normalise_block({"number": "0x10", "hash": "0x" + "ab" * 32, "parentHash": "0x" + "cd" * 32,
...     "timestamp": "0x5f5e100", "baseFeePerGas": "0x3b9aca00", "gasUsed": "0x5208", "gasLimit": "0x1c9c380",
...     "transactions": []}, chain_id=1)
>>> block.number, block.base_fee, block.tx_count, block.value_wei_sum
(16, 1000000000, 0, 0)
>>> parse_quantity("0xzz", "gasUsed")
Traceback (most recent call last):
...
chaincast.producers.chain_normalise.MalformedPayload: gasUsed: '0xzz' is not a hex quantity
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from statistics import median_low
from typing import Any

from pydantic import ValidationError

from chaincast.stream.records import Block, Tx

_HEX_QUANTITY = re.compile(r"0x[0-9a-fA-F]{1,64}")
_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


class MalformedPayload(ValueError):
    """A node payload that cannot become a record; the message names the field."""


def parse_quantity(value: Any, field: str) -> int:
    """A JSON-RPC quantity (``"0x1a"``) as an exact int. Ints pass through (some proxies decode)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if not isinstance(value, str) or not _HEX_QUANTITY.fullmatch(value):
        raise MalformedPayload(f"{field}: {_short(value)} is not a hex quantity")
    return int(value, 16)


def parse_hash(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _HASH.fullmatch(value):
        raise MalformedPayload(f"{field}: {_short(value)} is not a 32-byte hex hash")
    return value.lower()


def parse_address(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise MalformedPayload(f"{field}: {_short(value)} is not a 20-byte hex address")
    return value.lower()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _required(payload: Mapping[str, Any], field: str) -> Any:
    if field not in payload or payload[field] is None:
        raise MalformedPayload(f"{field}: missing")
    return payload[field]


def _optional_quantity(payload: Mapping[str, Any], field: str) -> int | None:
    value = payload.get(field)
    return None if value is None else parse_quantity(value, field)


def priority_fee(tx: Mapping[str, Any], base_fee: int) -> int:
    """What the block producer earned per gas: EIP-1559 tip, or a legacy price above the base fee."""
    if tx.get("maxPriorityFeePerGas") is not None and tx.get("maxFeePerGas") is not None:
        tip = parse_quantity(tx["maxPriorityFeePerGas"], "maxPriorityFeePerGas")
        cap = parse_quantity(tx["maxFeePerGas"], "maxFeePerGas")
        return max(0, min(tip, cap - base_fee))
    return max(0, parse_quantity(_required(tx, "gasPrice"), "gasPrice") - base_fee)


def _transactions(payload: Mapping[str, Any]) -> list[Any]:
    txs = payload.get("transactions")
    if txs is None:
        raise MalformedPayload("transactions: missing")
    if not isinstance(txs, list):
        raise MalformedPayload(f"transactions: {_short(txs)} is not a list")
    return txs


def normalise_block(payload: Any, chain_id: int) -> Block:
    """One block payload -> a Block. Value sum and priority fees need full transactions
    (``eth_getBlockByNumber(n, true)``); with hashes only they are 0 and None."""
    if payload is None:
        raise MalformedPayload("block: null (the node does not have it)")
    if not isinstance(payload, Mapping):
        raise MalformedPayload(f"block: {_short(payload)} is not an object")
    txs = _transactions(payload)
    base_fee = _optional_quantity(payload, "baseFeePerGas")
    full = [t for t in txs if isinstance(t, Mapping)]
    if full and len(full) != len(txs):
        raise MalformedPayload("transactions: mixes hashes and objects")
    value_sum = sum(parse_quantity(_required(t, "value"), f"transactions[{i}].value") for i, t in enumerate(full))
    tips = [priority_fee(t, base_fee) for t in full] if base_fee is not None else []
    try:
        return Block(
            chain_id=chain_id,
            number=parse_quantity(_required(payload, "number"), "number"),
            hash=parse_hash(_required(payload, "hash"), "hash"),
            parent_hash=parse_hash(_required(payload, "parentHash"), "parentHash"),
            timestamp=parse_quantity(_required(payload, "timestamp"), "timestamp"),
            base_fee=base_fee,
            gas_used=parse_quantity(_required(payload, "gasUsed"), "gasUsed"),
            gas_limit=parse_quantity(_required(payload, "gasLimit"), "gasLimit"),
            tx_count=len(txs),
            value_wei_sum=value_sum,
            priority_fee_median=median_low(tips) if tips else None,
        )
    except ValidationError as exc:  # e.g. gasLimit 0: parsed, but not a valid block
        raise MalformedPayload(f"block: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None


def _input_size(data: Any) -> int | None:
    """Bytes of call data from its 0x hex, None when absent or not hex.

    >>> _input_size("0x"), _input_size("0xa9059cbb"), _input_size(None)
    (0, 4, None)
    """
    if not isinstance(data, str) or not data.startswith("0x"):
        return None
    return (len(data) - 2) // 2


def normalise_tx(tx: Any, block: Block) -> Tx:
    """One full transaction object of ``block`` -> a Tx (the thesis fields, wei exact)."""
    if not isinstance(tx, Mapping):
        raise MalformedPayload(f"transaction: {_short(tx)} is not an object")
    to = tx.get("to")
    return Tx(
        chain_id=block.chain_id,
        block=block.number,
        block_hash=block.hash,
        timestamp=block.timestamp,
        hash=parse_hash(_required(tx, "hash"), "hash"),
        from_=parse_address(_required(tx, "from"), "from"),
        to=None if to is None else parse_address(to, "to"),
        value=parse_quantity(_required(tx, "value"), "value"),
        nonce=parse_quantity(_required(tx, "nonce"), "nonce"),
        type=parse_quantity(tx.get("type", "0x0"), "type"),  # pre-Berlin nodes omit it: legacy
        gas_price=_optional_quantity(tx, "gasPrice"),
        max_fee_per_gas=_optional_quantity(tx, "maxFeePerGas"),
        max_priority_fee_per_gas=_optional_quantity(tx, "maxPriorityFeePerGas"),
        index=_optional_quantity(tx, "transactionIndex"),
        gas=_optional_quantity(tx, "gas"),
        input_size=_input_size(tx.get("input")),
    )


def normalise_txs(payload: Mapping[str, Any], block: Block) -> tuple[list[Tx], list[tuple[Any, str]]]:
    """The block's transactions as Tx records, plus (raw, reason) for each that does not parse:
    one odd transaction is dead-lettered on its own and never holds the block back."""
    good: list[Tx] = []
    bad: list[tuple[Any, str]] = []
    for i, raw in enumerate(_transactions(payload)):
        if not isinstance(raw, Mapping):
            continue  # hashes only: there is nothing to export
        try:
            good.append(normalise_tx(raw, block))
        except MalformedPayload as exc:
            bad.append((raw, f"malformed tx: transactions[{i}].{exc}"))
    return good, bad

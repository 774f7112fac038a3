"""The transaction reader: formats, chain order, refusals with reasons, one-line errors; tokens."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from chaincast.models.txs import (EPS, NUM_FEATURES, TxFormatError, Vocab, num_features, read_transactions,
                                  target, tokens, windows)
from chaincast.stream.records import Tx

TXS = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "chain" / "mainnet_txs_03300000_03302204.csv.gz"
HEADER = ("hash,nonce,block_hash,block_number,transaction_index,from_address,to_address,value,gas,gas_price,input,"
          "block_timestamp,max_fee_per_gas,max_priority_fee_per_gas,transaction_type")
A, B = "0x" + "ab" * 20, "0x" + "cd" * 20


def row(h: str, block: int, index: int, value: str = "1000000000000000000", sender: str = A, to: str = B) -> str:
    return f"{h},0,0xbb,{block},{index},{sender},{to},{value},21000,20000000000,0x,1488775107,,,0"


def test_real_file_reads_in_chain_order() -> None:
    table, refused = read_transactions([TXS])
    assert len(table) == 19_999 and refused.total == 0
    order = table.block * 10_000 + table.index
    assert np.all(np.diff(order) > 0)
    zero = table.value_eth == 0
    assert 0.05 < zero.mean() < 0.2  # March 2017: ~10 % zero-value transactions, nearly all contract calls
    assert np.mean(table.input_size[zero] > 0) > 0.95


def test_bad_rows_are_refused_with_reasons(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("\n".join([HEADER, row("0x1", 5, 1), row("0x2", 5, 0), row("0x3", 5, 2, value="-5"),
                            row("0x4", 5, 3, value="1.5"), row("0x5", 5, 4, sender="0x12"),
                            row("0x6", 6, 0, to="0xzz" + "0" * 38), row("0x7", 6, 1, to=""), "0x8,1,2",
                            row("0x1", 5, 1)]) + "\n")
    table, refused = read_transactions([p])
    assert table.hash.tolist() == ["0x2", "0x1", "0x7"]  # sorted by (block, index); creation kept
    assert table.receiver[-1] == ""
    assert dict(refused.counts) == {"value is negative": 1, "value is not an integer": 1,
                                    "from_address is not a 20-byte hex address": 1,
                                    "to_address is not a 20-byte hex address": 1, "wrong number of fields": 1,
                                    "duplicate hash": 1}


@pytest.mark.parametrize("content, message", [
    ("", "empty file"),
    ("a,b,c\n1,2,3\n", "missing columns"),
    (HEADER + "\n" + row("0x3", 5, 2, value="-5") + "\n", "no usable transaction"),
])
def test_unusable_files_are_one_line_errors(tmp_path: Path, content: str, message: str) -> None:
    p = tmp_path / "t.csv"
    p.write_text(content)
    with pytest.raises(TxFormatError, match=message) as err:
        read_transactions([p])
    assert "\n" not in str(err.value)


def test_chain_txs_records_read_like_the_csv(tmp_path: Path) -> None:
    txs = [Tx(chain_id=1, block=9, block_hash="0xbb", timestamp=1488775107, hash=f"0x{i}", **{"from": A}, to=B,
              value=10**18 * i, nonce=3, type=2, gas_price=10**9, index=i, gas=21000, input_size=0) for i in range(3)]
    p = tmp_path / "txs.jsonl.gz"
    with gzip.open(p, "wt") as fh:
        fh.write("\n".join(t.dumps().decode() for t in reversed(txs)) + "\n" + json.dumps({"block": 1}) + "\n")
    table, refused = read_transactions([p])
    assert table.value_eth.tolist() == [0.0, 1.0, 2.0] and table.index.tolist() == [0, 1, 2]
    assert dict(refused.counts) == {"missing field timestamp": 1}


def test_tokens_and_target() -> None:
    table, _ = read_transactions([TXS])
    small = table.take(slice(0, 500))
    vocab = Vocab.fit(small, min_count=5)
    ids, num = tokens(small, vocab)
    assert ids.shape == (500, 4) and num.shape == (500, len(NUM_FEATURES))
    assert ids[:, 0].max() < vocab.size and (ids[:, 0] > vocab.buckets).any()  # busy senders are known
    assert np.isfinite(num).all()
    # Features of a row depend on nothing after it (live, the next transaction is not there yet).
    assert np.array_equal(num_features(small.take(slice(0, 100))), num[:100])
    y = target(small.value_eth)
    assert y.min() == pytest.approx(np.log(EPS))
    assert windows(y, np.array([7, 9]), 8).shape == (2, 8)

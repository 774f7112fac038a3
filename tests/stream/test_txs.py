"""The txs agent's state (stream.txs.TxLive) on real March-2017 transactions, without a broker:
forecasts never see their own value, equal the training-time windows, alert above the calibrated
bound, and a reorg retraction takes a block's forecasts out of the running score."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from chaincast.consumers.registry import ModelEntry, Registry
from chaincast.models.tx_backtest import prepare
from chaincast.models.tx_build import export_tx
from chaincast.models.tx_encoder import median_model, predict_last
from chaincast.models.tx_serving import TxForecaster
from chaincast.models.txs import NUM_FEATURES, read_transactions
from chaincast.stream.records import Tx
from chaincast.stream.txs import TxLive

torch.set_num_threads(1)
TXS = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "chain" / "mainnet_txs_03300000_03302204.csv.gz"
WINDOW, TRAIN, LIVE = 8, 2000, 600


def records() -> list[Tx]:
    with gzip.open(TXS, "rt") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: (int(r["block_number"]), int(r["transaction_index"])))
    rows = rows[: TRAIN + LIVE]  # the file is not in chain order; the reader sorts it
    return [Tx(chain_id=1, block=int(r["block_number"]), block_hash=r["block_hash"], timestamp=int(r["block_timestamp"]),
               hash=r["hash"], **{"from": r["from_address"]}, to=r["to_address"] or None, value=int(r["value"]),
               nonce=int(r["nonce"]), type=int(r["transaction_type"]), gas_price=int(r["gas_price"]),
               index=int(r["transaction_index"]), gas=int(r["gas"]), input_size=(len(r["input"]) - 2) // 2)
            for r in rows]


def build_tx_entry(registry: Registry) -> tuple[ModelEntry, np.ndarray]:
    """A receiver-median tx model in ``registry`` and its forecasts of the LIVE transactions."""
    table, _ = read_transactions([TXS])
    table = table.take(slice(0, TRAIN + LIVE))
    p = prepare(table, np.arange(TRAIN))
    model = median_model("receiver_median", p.vocab.size, p.ids[:TRAIN], p.y[:TRAIN], p.vocab.buckets)
    q = predict_last(model, *p.windows(np.arange(WINDOW - 1, TRAIN), WINDOW))
    residual = p.y[WINDOW - 1 : TRAIN] - q[:, 1]
    levels = [0.5, 0.9, 0.99]
    card = {"kind": "tx_value", "name": "tx_value", "family": "receiver_median", "window": WINDOW,
            "features": list(NUM_FEATURES), "vocab": p.vocab.to_card(), "constant": np.quantile(p.y[:TRAIN], [0.1, 0.5, 0.9]).tolist(),
            "alert_residuals": {"levels": levels, "values": np.quantile(residual, levels).tolist()}}
    entry = registry.put(export_tx(model, WINDOW), card)
    return entry, predict_last(model, *p.windows(np.arange(TRAIN, TRAIN + LIVE), WINDOW))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    entry, expected = build_tx_entry(Registry(tmp_path_factory.mktemp("reg")))
    return TxForecaster.load(entry.onnx_path, entry.sha256), expected


def feed(live: TxLive, model: TxForecaster, txs: list[Tx]):
    out = []
    for block in dict.fromkeys(t.block for t in txs):
        out += live.forecast([t for t in txs if t.block == block], model, now_ms=0)
    return out


def test_forecasts_match_training_windows_and_alert(served) -> None:
    model, expected = served
    txs = records()
    live = TxLive(WINDOW, skill_window=10_000, level=0.99)
    feed(live, model, txs[TRAIN - WINDOW + 1 : TRAIN])  # the context of the first live transaction
    out = feed(live, model, txs[TRAIN:])
    assert [o.forecast.hash for o in out] == [t.hash for t in txs[TRAIN:]]
    got = np.array([[o.forecast.q10, o.forecast.q50, o.forecast.q90] for o in out])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    alerts = [o for o in out if o.alert is not None]
    assert 1 <= len(alerts) <= 0.05 * LIVE  # calibrated at 99 % on training rows: a few, not many
    assert all(a.forecast.y > a.forecast.threshold and a.forecast.value_eth > 0 for a in alerts)
    mae, const, skill = live.skill.get()
    assert len(live.skill) == LIVE and mae < const and skill > 0  # the median beats the constant here


def test_the_forecast_never_sees_its_own_value(served) -> None:
    model, _ = served
    txs = records()[TRAIN - WINDOW : TRAIN]
    a = TxLive(WINDOW, 100, 0.99)
    b = TxLive(WINDOW, 100, 0.99)
    last = txs[-1]
    out_a = feed(a, model, txs)
    out_b = feed(b, model, txs[:-1] + [last.model_copy(update={"value": last.value * 1000 + 10**21})])
    assert out_a[-1].forecast.q50 == out_b[-1].forecast.q50 and out_a[-1].forecast.y != out_b[-1].forecast.y


def test_a_reorg_retracts_the_block(served) -> None:
    model, _ = served
    txs = records()[TRAIN - WINDOW + 1 : TRAIN + 200]
    live = TxLive(WINDOW, 10_000, 0.99)
    out = feed(live, model, txs)
    victim = out[-1].forecast.block_hash
    in_block = [o for o in out if o.forecast.block_hash == victim]
    before = len(live.skill)
    gone = live.retract(victim)
    assert [o.forecast.hash for o in gone] == [o.forecast.hash for o in in_block]
    assert len(live.skill) == before - len(gone)
    assert all(s.block_hash != victim for s in live.context.seen)
    late = [t for t in txs if t.block_hash == victim]
    assert live.forecast(late, model, now_ms=0) == []  # a retracted block's transactions arriving late

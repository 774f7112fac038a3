"""A worker refuses forged model updates for every slot it serves, dead-letters them, and keeps serving.

Signing is on (CHAINCAST_MODEL_SIGNING_KEY). Forged updates for the market model,
a fee model and the transaction-value model (unsigned, pointing at /dev/zero) are on
``models.updates`` beside the genuine market champion when the worker starts: each
slot refuses its forgery with a dead letter; the genuine champion serves.
"""

from __future__ import annotations

import asyncio

import pytest

from chaincast.producers.replay import Market, replay
from chaincast.stream.predict import history_size
from chaincast.stream.records import DeadLetter, ModelUpdate, Prediction
from tests.integration.conftest import day_of, read_topic, send_raw, start_worker

pytestmark = pytest.mark.one_broker  # model trust, not the broker, is under test


def test_forged_updates_for_market_fee_and_tx_slots_are_dead_lettered(served, tmp_path):
    settings, entry = served(CHAINCAST_MODEL_SIGNING_KEY="worker-key", CHAINCAST_CHAIN_TXS="1")
    names = [settings.model_name, f"{settings.fee_model_prefix}.base_fee.h{settings.fee_horizons[0]}",
             settings.tx_model_name]
    forged = [ModelUpdate(name=n, version="f0f0f0f0f0f0", uri="file:///dev/zero", sha256="0" * 64) for n in names]
    asyncio.run(send_raw(settings, settings.topic_models, [(u.name.encode(), u.dumps()) for u in forged]))
    worker = start_worker(settings, tmp_path)
    try:
        letters = asyncio.run(read_topic(settings, settings.topic_deadletter, lambda m: len(m) >= 3, timeout=180))
        asyncio.run(replay(settings, [Market("BTCUSDT", day_of("BTCUSDT")[:120])]))
        n = 119 - history_size(settings.window) + 1
        preds = asyncio.run(read_topic(settings, settings.topic_predictions, lambda m: len(m) >= n, timeout=180))
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]
    refused = sorted((d.key, d.source, d.topic, d.reason) for d in (DeadLetter.loads(m.value) for m in letters))
    assert refused == sorted((name, "stream.models", settings.topic_models,
                              "model_refused: untrusted: the update is not signed") for name in names)
    assert {Prediction.loads(m.value).model_version for m in preds} == {entry.version}  # the genuine one serves

"""The transaction-value retrainer on the real embedded broker, and the txs agent's hot swap.

Real March-2017 transactions go to ``chain.txs``; the retrainer's first round promotes and
announces a model, the second scores the champion through its ONNX file beside the
challenger; the agent's slot swaps to an announced model and refuses a tampered one. A round
whose registry write fails (a full disk) backs off and runs again, and lands once there is room."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest
import torch
from aiokafka import AIOKafkaConsumer

from chaincast.consumers.registry import Registry
from chaincast.consumers.tx_retrainer import TxRetrainer
from chaincast.models.tx_serving import TxForecaster
from chaincast.stream.agents.txs import TxModelSlot
from chaincast.stream.metrics import REFUSALS
from chaincast.stream.publish import Publisher
from chaincast.stream.records import ModelUpdate
from chaincast.stream.topics import ensure_topics
from tests.conftest import fill
from tests.stream.test_txs import records

torch.set_num_threads(1)
WAIT = 300.0


async def announced(settings) -> list[ModelUpdate]:
    consumer = AIOKafkaConsumer(settings.topic_models, bootstrap_servers=settings.kafka_bootstrap_servers,
                                group_id=None, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        out: list[ModelUpdate] = []
        for _ in range(6):
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                out += [ModelUpdate.loads(m.value) for m in msgs]
        return out
    finally:
        await consumer.stop()


@pytest.mark.timeout(900)
def test_retrainer_promotes_then_challenges_and_the_agent_swaps(settings_for) -> None:
    settings = settings_for(CHAINCAST_TX_RETRAIN_EVERY="1200", CHAINCAST_TX_WINDOW="8", CHAINCAST_TX_RETRAIN_EPOCHS="1",
                            CHAINCAST_TX_RETRAIN_HISTORY="2000")
    txs = records()[:2400]

    async def scenario() -> TxRetrainer:
        await ensure_topics(settings)
        retrainer = TxRetrainer(settings)
        stop = asyncio.Event()
        task = asyncio.ensure_future(retrainer.run(stop))
        async with Publisher(settings) as pub:
            for rounds, part in enumerate((txs[:1200], txs[1200:]), start=1):  # a round after each 1,200
                for t in part:
                    await pub.send(settings.topic_txs, "1", t)
                await pub.flush()
                deadline = time.monotonic() + WAIT
                while len(retrainer.rounds) < rounds and time.monotonic() < deadline and not task.done():
                    await asyncio.sleep(0.5)
        stop.set()
        await task
        return retrainer

    retrainer = asyncio.run(scenario())
    assert len(retrainer.rounds) == 2, "two rounds: 2,400 transactions at one round per 1,200"
    first, second = retrainer.rounds
    assert first.promote and first.reason == "first model"
    assert second.champion_mae is not None and np.isfinite(second.champion_mae)
    assert second.promote == (second.challenger_mae < second.champion_mae)
    champion = retrainer.registry.champion(settings.tx_model_name)
    assert champion is not None and champion.card["kind"] == "tx_value"
    updates = [u for u in asyncio.run(announced(settings)) if u.name == settings.tx_model_name]
    assert updates and updates[-1].version == champion.version

    # The agent's slot: the announced model swaps in; a tampered file is refused and the old one keeps serving.
    async def swap() -> tuple[bool, bool, TxForecaster | None]:
        slot = TxModelSlot(settings.tx_model_name)
        ok = await slot.offer(updates[-1])
        bad = updates[-1].model_copy(update={"version": "tampered0000", "sha256": "0" * 64})
        refused = not await slot.offer(bad)
        return ok, refused, slot.current

    ok, refused, current = asyncio.run(swap())
    assert ok and refused and isinstance(current, TxForecaster) and current.version == champion.version


@pytest.mark.one_broker
@pytest.mark.timeout(900)
def test_a_full_registry_disk_fails_the_round_without_raising_and_it_lands_once_there_is_room(
        settings_for, tmp_path, small_fs, caplog) -> None:
    settings = settings_for(CHAINCAST_TX_RETRAIN_EVERY="1200", CHAINCAST_TX_WINDOW="8", CHAINCAST_TX_RETRAIN_EPOCHS="1",
                            CHAINCAST_TX_RETRAIN_HISTORY="2000", CHAINCAST_REGISTRY_RETRY_S="100")
    registry = Registry(small_fs(tmp_path / "registry", 16 * 1024 * 1024))
    retrainer = TxRetrainer(settings, registry=registry)
    for tx in records()[:1200]:
        retrainer.history.add(tx)
    filler = fill(registry.root)  # the disk is full from here on
    failed = REFUSALS.labels("registry_write_failed")
    before = failed._value.get()

    delays = []
    for attempt in (1, 2):  # the first round and its rerun once the backoff is due: both refused by the disk
        with caplog.at_level(logging.ERROR, logger="chaincast.consumers.tx_retrainer"):
            result = asyncio.run(retrainer.round())
        delays.append(retrainer.backoff.retry_at - time.monotonic())
        assert result.promote and failed._value.get() - before == attempt and not retrainer.backoff.due()
        assert retrainer.history.new == 1200  # still due: run() starts the round again once the backoff is
        assert "cannot write the registry" in caplog.text and "No space left on device" in caplog.text
    assert 80 - 1 < delays[0] <= 100 and 160 - 1 < delays[1] <= 200  # doubled (less up to a fifth of jitter)
    assert registry.champion(settings.tx_model_name) is None
    assert sorted(p.name for p in registry.root.iterdir()) == ["filler"]  # nothing half-written

    filler.unlink()  # room again: the rerun lands and is announced
    result = asyncio.run(retrainer.round())
    champion = registry.champion(settings.tx_model_name)
    assert result.promote and champion is not None and champion.card["kind"] == "tx_value"
    assert retrainer.backoff.due() and retrainer.backoff.failures == 0 and retrainer.history.new == 0
    assert failed._value.get() - before == 2
    updates = [u for u in asyncio.run(announced(settings)) if u.name == settings.tx_model_name]
    assert [u.version for u in updates] == [champion.version]

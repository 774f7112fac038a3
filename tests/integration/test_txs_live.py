"""End to end on real parts: a Hardhat chain with real transactions -> the chain follower (txs on) ->
the embedded broker -> a worker with the txs agent -> forecasts in Redis, a whale alert on the
``alerts`` topic and in Redis, the running skill; a reorg retracts the orphaned block's forecasts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from chaincast.consumers.promotion import announce
from chaincast.consumers.registry import Registry
from chaincast.deploy.hardhat import DEV_ACCOUNTS, rpc, start_hardhat
from chaincast.models.tx_build import build_tx_model, export_tx_checked
from chaincast.models.tx_encoder import TxFit
from chaincast.models.txs import read_transactions
from chaincast.producers.chain import follow_chain
from chaincast.stream.records import TxAlert
from chaincast.stream.topics import ensure_topics
from chaincast.stream.redis_layout import RedisLayout
from tests.conftest import TEST_DATA
from tests.integration.conftest import read_topic, start_worker

pytestmark = pytest.mark.one_broker  # the tx model's forecasts and alerts; delivery on Kafka is proven elsewhere

torch.set_num_threads(1)
WINDOW = 8
WAIT = 180.0  # a bound on each wait (the machine is shared), not a timing assertion
WHALE_ETH = 10**7  # far above anything in the training data: an alert whatever the calibration


def send(url: str, sender: str, to: str, wei: int) -> str:
    return rpc(url, "eth_sendTransaction", [{"from": sender, "to": to, "value": hex(wei)}])


async def until(check, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await asyncio.sleep(0.2)


@pytest.mark.timeout(900)
def test_live_forecasts_alert_and_retract(settings_for, tmp_path: Path) -> None:
    settings = settings_for(CHAINCAST_CHAIN_TXS="true",
                            CHAINCAST_CHAIN_FROM_BLOCK="0", CHAINCAST_CHAIN_POLL_INTERVAL="0.2")
    asyncio.run(ensure_topics(settings))
    table, _ = read_transactions([TEST_DATA / "chain" / "mainnet_txs_03300000_03302204.csv.gz"])
    build = build_tx_model(table.take(slice(0, 2000)), WINDOW, TxFit(epochs=1, max_windows=512))
    onnx_bytes, card = export_tx_checked(build)
    registry = Registry(settings.registry_dir)
    entry = registry.put(onnx_bytes, card)
    registry.set_champion(settings.tx_model_name, entry.version)
    asyncio.run(announce(settings, settings.tx_model_name, entry))

    chain, http_url, ws_url = start_hardhat(tmp_path / "hardhat")
    worker = start_worker(settings, tmp_path)
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    keys = RedisLayout.of(settings)
    preds, alerts_stream = keys.tx_history(31337), keys.tx_alerts(31337)
    try:
        rpc(http_url, "evm_setAutomine", [False])  # blocks are mined on demand below, several transactions each
        rpc(http_url, "hardhat_setBalance", [DEV_ACCOUNTS[5], hex(10**9 * 10**18)])

        async def scenario() -> tuple[str, list[str]]:
            stop = asyncio.Event()
            follower = asyncio.ensure_future(follow_chain(settings, node_url=ws_url, stop=stop))
            rng = np.random.default_rng(0)
            try:
                sent = 0
                for _ in range(8):  # ordinary transfers, several per block: the context fills up
                    for _ in range(4):
                        a, b = rng.choice(5, 2, replace=False)
                        await asyncio.to_thread(send, http_url, DEV_ACCOUNTS[a], DEV_ACCOUNTS[b],
                                                int(rng.integers(10**15, 10**18)))
                        sent += 1
                    await asyncio.to_thread(rpc, http_url, "evm_mine")
                whale = await asyncio.to_thread(send, http_url, DEV_ACCOUNTS[5], DEV_ACCOUNTS[0], WHALE_ETH * 10**18)
                await asyncio.to_thread(rpc, http_url, "evm_mine")
                sent += 1
                expected = sent - (WINDOW - 1)  # the first window-1 transactions only fill the context
                await until(lambda: r.xlen(preds) >= expected, f"{expected} forecasts in Redis")
                await until(lambda: r.xlen(alerts_stream) >= 1, "an alert in Redis")

                # A reorg: snapshot, mine a block with two transactions, let it be forecast, revert, mine another branch.
                snap = await asyncio.to_thread(rpc, http_url, "evm_snapshot")
                orphan = [await asyncio.to_thread(send, http_url, DEV_ACCOUNTS[1], DEV_ACCOUNTS[2], 10**17 * (i + 1))
                          for i in range(2)]
                await asyncio.to_thread(rpc, http_url, "evm_mine")
                await until(lambda: any(e[1]["hash"] in orphan for e in r.xrange(preds)), "the orphan's forecasts")
                await asyncio.to_thread(rpc, http_url, "evm_revert", [snap])
                ts = int((await asyncio.to_thread(rpc, http_url, "eth_getBlockByNumber", ["latest", False]))["timestamp"], 16)
                await asyncio.to_thread(send, http_url, DEV_ACCOUNTS[3], DEV_ACCOUNTS[4], 10**16)
                for i in range(2):
                    await asyncio.to_thread(rpc, http_url, "evm_mine", [ts + 5 + i])
                await until(lambda: not any(e[1]["hash"] in orphan for e in r.xrange(preds)),
                            "the orphan's forecasts retracted")
                return whale, orphan
            finally:
                stop.set()
                await follower

        whale, orphan = asyncio.run(scenario())
        alert_msgs = asyncio.run(read_topic(settings, settings.topic_alerts, lambda m: len(m) >= 1, timeout=WAIT))
    finally:
        code = worker.stop(timeout=WAIT)  # a loaded machine can take more than the default 10 s to drain
        chain.stop()
    assert code == 0, (tmp_path / "worker.log").read_text()[-3000:]

    forecasts = [e[1] for e in r.xrange(preds)]
    assert all(f["model_version"] == entry.version for f in forecasts)
    for f in forecasts:
        q10, q50, q90 = float(f["q10"]), float(f["q50"]), float(f["q90"])
        assert q10 <= q50 <= q90 and np.isfinite(float(f["threshold"]))
    alerts = [TxAlert.loads(m.value) for m in alert_msgs]
    assert whale in {a.forecast.hash for a in alerts}
    whale_alert = next(a for a in alerts if a.forecast.hash == whale)
    assert whale_alert.forecast.value_eth == WHALE_ETH and whale_alert.excess > 0 and not whale_alert.retracted
    assert whale in {e[1]["hash"] for e in r.xrange(alerts_stream)}
    ordinary = [f for f in forecasts if f["hash"] != whale]
    assert sum(float(f["y"]) > float(f["threshold"]) for f in ordinary) <= len(ordinary) // 2
    score = r.hgetall(keys.tx_score(settings.tx_model_name))
    assert int(score["n"]) >= len(forecasts) - 1 and np.isfinite(float(score["mae"]))
    assert not set(orphan) & {f["hash"] for f in forecasts}

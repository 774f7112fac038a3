"""The exchange producer SIGKILLed mid-stream against the local exchange, then restarted.

After the restart the REST backfill closes the gap: the trades on the topic are exactly
the exchange's (every id, in order per symbol), and the only duplicates are the ones the
README documents: trades acknowledged after the last checkpoint save before the kill
(ids above the checkpoint), published again by the backfill.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter

import pytest

from tests.producers.exchange_helpers import BTC_DAY, exchange_settings, read_topic  # noqa: F401 (a fixture)
from tests.producers.test_exchange_cli import cli

from chaincast.models.history import load_bars
from chaincast.producers.checkpoint import Checkpoint
from chaincast.producers.synth import bar_trades
from chaincast.stream.records import TradeBatch
from chaincast.stream.topics import ensure_topics

EXPECTED = [t.trade_id for row in load_bars(BTC_DAY) for t in bar_trades("binance", "BTCUSDT", row)]


def wait_for(condition, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_producer_killed_mid_stream_backfills_the_gap_on_restart(exchange_settings) -> None:
    settings = exchange_settings(CHAINCAST_EXCHANGE_CHECKPOINT_INTERVAL_S="0.2")
    asyncio.run(ensure_topics(settings))
    # ~5,800 trades in about 70 s of wall time: long enough to kill the producer mid-day.
    server = cli("serve", "--data", str(BTC_DAY), "--port", "0", "--speed", "1200")
    first = second = None
    try:
        url = server.stdout.readline().strip()
        checkpoint = Checkpoint.for_endpoint(settings.home, "binance", url)
        position = lambda: checkpoint.load().get("BTCUSDT")  # noqa: E731
        first = cli("produce", "--url", url, "--symbols", "btcusdt", "--streams", "trade", env=settings.env())
        wait_for(lambda: (p := position()) is not None and p.trade_id >= EXPECTED[1000], "a thousand trades into the day acked")
        first.send_signal(signal.SIGKILL)  # no shutdown, no final checkpoint
        first.wait(10)
        at_kill = position().trade_id
        time.sleep(1.0)  # the exchange moves on while no producer listens: a gap to backfill
        second = cli("produce", "--url", url, "--symbols", "btcusdt", "--streams", "trade", env=settings.env())
        wait_for(lambda: (p := position()) is not None and p.trade_id == EXPECTED[-1], "the whole day acked")
        second.send_signal(signal.SIGTERM)
        out, err = second.communicate(timeout=60)
    finally:
        for proc in (first, second, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert second.returncode == 0, err
    gaps, backfilled, missing = map(int, re.search(r"(\d+) gaps \((\d+) backfilled, (\d+) missing\)", out).groups())
    assert gaps >= 1 and backfilled > 0 and missing == 0, out

    ids: list[int] = []
    records = asyncio.run(read_topic(settings, settings.topic_trades,
                                     lambda rs: any(TradeBatch.loads(r.value).trades[-1].trade_id == EXPECTED[-1]
                                                    for r in rs), guard_s=120))
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        ids += [t.trade_id for t in TradeBatch.loads(r.value).trades]
    # From the first trade the first producer saw (it connected after the exchange started) to the end:
    # nothing missing, nothing foreign.
    assert sorted(set(ids)) == EXPECTED[EXPECTED.index(min(ids)):]
    assert min(ids) < at_kill < EXPECTED[-1]  # killed mid-stream
    duplicated = [i for i, n in Counter(ids).items() if n > 1]
    assert all(i > at_kill for i in duplicated)  # only trades after the last checkpoint are sent twice
    assert all(n == 2 for n in Counter(ids).values() if n > 1)

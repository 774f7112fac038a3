"""Producer throughput into the broker: trades/s one producer process sustains.

The local exchange runs as its own process at ``--speed max`` (so the producer, not the
exchange's clock, sets the pace); the producer runs here against the embedded broker
(or ``KAFKA_BOOTSTRAP_SERVERS``). Reported: trades acknowledged by Kafka per wall
second, from the first ack to the last. Not a test (no timed assertions in tests).

    python tests/producers/bench_exchange_throughput.py [--streams trade] [HISTORY_FILE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARKET = REPO / "tests" / "fixtures" / "data" / "market"
DEFAULT_FILES = [MARKET / "binance_BTCUSDT_1m_2023-03.csv.gz", MARKET / "binance_ETHUSDT_1m_2023-03.csv.gz"]


async def measure(settings, url: str, symbols: list[str], streams: list[str], total: int) -> tuple[int, float, float]:
    from chaincast.stream.topics import ensure_topics
    from chaincast.producers.exchange import BINANCE, ExchangeProducer
    from chaincast.stream.publish import Publisher

    await ensure_topics(settings)
    async with Publisher(settings) as publisher:
        producer = ExchangeProducer(settings, publisher, BINANCE, url, symbols, streams)
        stop = asyncio.Event()
        task = asyncio.create_task(producer.run(stop))
        while producer.stats.trades == 0:
            await asyncio.sleep(0.001)
        start, cpu, first = time.perf_counter(), time.process_time(), producer.stats.trades
        while producer.stats.trades < total:
            await asyncio.sleep(0.01)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        stop.set()
        stats = await task
    return stats.trades - first, elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, default=DEFAULT_FILES)
    parser.add_argument("--streams", default="trade")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from chaincast.deploy.embedded import embedded_stack
    from chaincast.models.history import load_bars, symbol_of
    from chaincast.stream.settings import Settings

    total = sum(4 * len(load_bars(f)) for f in args.files)
    symbols = [symbol_of(f) for f in args.files]
    with tempfile.TemporaryDirectory() as tmp, embedded_stack(Path(tmp), redis=False) as env:
        env = {**os.environ, **env} if "KAFKA_BOOTSTRAP_SERVERS" not in os.environ else dict(os.environ)
        server = subprocess.Popen(
            [sys.executable, "-m", "chaincast.deploy.exchange_cli", "serve", "--port", "0", "--speed", "max",
             *[a for f in args.files for a in ("--data", str(f))]],
            cwd=REPO, stdout=subprocess.PIPE, text=True, env=env)
        try:
            url = server.stdout.readline().strip()
            settings = Settings(**{k: v for k, v in env.items() if k.startswith(("KAFKA", "CHAINCAST"))},
                                CHAINCAST_HOME=str(Path(tmp) / "home"))
            count, elapsed, cpu = asyncio.run(measure(settings, url, symbols, args.streams.split(","), total))
        finally:
            server.terminate()
            server.wait(10)
    # The machine is shared: trades per CPU-second of the producer is the capacity, wall rate what we got.
    print(f"{count} trades in {elapsed:.2f}s: {count / elapsed:,.0f} trades/s wall, "
          f"{count / cpu:,.0f} trades per producer CPU-second "
          f"(streams={args.streams}, broker={'embedded' if 'CHAINCAST_EMBEDDED_BROKER' in env else 'external'})")


if __name__ == "__main__":
    main()

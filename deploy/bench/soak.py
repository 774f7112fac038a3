"""`chaincast bench --soak SECONDS`: does a max-speed run keep its pace while the partitions grow?

One worker on fresh topics, fed at max speed by a producer that replays the bundled history as
``chaincast replay`` does (four trades per bar, one message per bar) over four markets, one per
partition, the history looped with its minutes shifted so ids and event time keep rising. The
producer stays at most ``LEAD`` messages ahead of the worker: the broker always holds a backlog
to read (the worker never waits for input), while the producer's own CPU does not swamp the
first minutes on a shared machine. The worker's ``chaincast_predictions_total`` is sampled every
few seconds; the result is the forecast rate of the first and of the last window (a minute by
default) and their ratio, which must stay at or above ``GOAL`` (0.8): on the embedded broker a
fetch lists the whole partition, so a stall shows as a falling rate.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer

from chaincast.consumers.promotion import announce
from chaincast.consumers.registry import Registry
from chaincast.deploy.bench.harness import WORKER_START_S, run_settings, workers
from chaincast.deploy.bench.plan import derive_markets, trade_messages
from chaincast.deploy.bench.report import code_version, machine
from chaincast.models.history import TS, load_many
from chaincast.models.timeunits import MINUTE_MS
from chaincast.producers.synth import TRADES_PER_BAR
from chaincast.stream import kafka_options
from chaincast.stream.settings import Settings
from chaincast.stream.topics import ensure_topics

GOAL = 0.8  # last window's forecast rate / first window's
LEAD = 20_000  # messages the producer may be ahead of the worker
SAMPLE_S = 5.0
CHUNK_BARS = 500  # bars per market generated at a time (the history is looped lazily)
MARKETS = 4


def looped(markets: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Chunks of ``CHUNK_BARS`` bars per market, forever: the history again and again, each pass
    shifted in event time by its own span so minutes (and trade ids) keep rising.

    >>> rows = np.array([[0.0, 1, 1, 1, 1, 1], [60_000.0, 1, 1, 1, 1, 1]])
    >>> chunks = looped({"A": rows})
    >>> [c["A"][:, 0].tolist() for c in (next(chunks), next(chunks))]
    [[0.0, 60000.0], [120000.0, 180000.0]]
    """
    span = min(int(rows[-1, TS] - rows[0, TS]) + MINUTE_MS for rows in markets.values())
    shift = 0
    while True:
        n = min(len(rows) for rows in markets.values())
        for start in range(0, n, CHUNK_BARS):
            chunk = {}
            for sym, rows in markets.items():
                part = rows[start:start + CHUNK_BARS].copy()
                part[:, TS] += shift
                chunk[sym] = part
            yield chunk
        shift += span


def rates(samples: list[tuple[float, float]], window_s: float) -> dict[str, Any]:
    """Forecasts per second in the first and last ``window_s`` of the samples (time, total), from
    the first sample with a forecast; and per window along the run.

    >>> r = rates([(0, 0), (5, 0), (10, 100), (20, 200), (30, 260), (40, 320)], 10)
    >>> r["first_per_s"], r["last_per_s"], r["ratio_last_first"], r["per_window"]
    (15.0, 6.0, 0.4, [15.0, 8.0, 6.0])
    """
    start = next((i for i, (_t, n) in enumerate(samples) if n > 0), None)
    if start is None or samples[-1][0] - samples[start - 1 if start else 0][0] < 2 * window_s:
        return {"first_per_s": None, "last_per_s": None, "ratio_last_first": None, "per_window": []}
    t0 = samples[start - 1 if start else 0][0]  # the last sample before the first forecast

    def at(t: float) -> float:  # the total at time t, interpolated between samples
        times = [s[0] for s in samples]
        return float(np.interp(t, times, [s[1] for s in samples]))

    end = samples[-1][0]
    per_window = [(at(t + window_s) - at(t)) / window_s for t in np.arange(t0, end - window_s + 1e-9, window_s)]
    first = (at(t0 + window_s) - at(t0)) / window_s
    last = (at(end) - at(end - window_s)) / window_s
    return {"first_per_s": first, "last_per_s": last, "ratio_last_first": last / first if first else None,
            "per_window": [round(r, 3) for r in per_window]}


class Feeder:
    """The max-speed producer, in a thread of its own: sends the looped history, never more than
    ``LEAD`` messages ahead of what the worker has read (``done``, updated by the sampler)."""

    def __init__(self, settings: Settings, markets: Mapping[str, np.ndarray], lead: int = LEAD) -> None:
        self.settings = settings
        self.markets = markets
        self.lead = lead
        self.sent = 0
        self.done = 0.0  # messages the worker has read, from its metrics
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="soak-feeder", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._feed())
        except BaseException as exc:  # noqa: BLE001 - reported by the soak, not lost with the thread
            self.error = exc

    async def _feed(self) -> None:
        # The producer options of ``chaincast replay`` (kafka_options.producer), so the embedded
        # broker gets its one record per batch.
        producer = AIOKafkaProducer(**kafka_options.producer(self.settings))
        await producer.start()
        try:
            for chunk in looped(self.markets):
                sends = []
                for key, value in trade_messages(self.settings.exchange, chunk, TRADES_PER_BAR, TRADES_PER_BAR):
                    while self.sent - self.done > self.lead and not self.stop.is_set():
                        await asyncio.sleep(0.05)
                    if self.stop.is_set():
                        return
                    sends.append(await producer.send(self.settings.topic_trades, value, key=key))
                    self.sent += 1
                await asyncio.gather(*sends)  # aiokafka's flush never raises: check the acks
        finally:
            await producer.stop()


def run_soak(base: Settings, seconds: float, files: dict[str, list[Path]], log_dir: Path,
             echo: Callable[[str], None], kafka: bool = False, window_s: float = 60.0,
             sample_s: float = SAMPLE_S) -> dict[str, Any]:
    """One soak run (see the module docstring); the broker as for ``run_bench``."""
    from chaincast.deploy.bench.run import stack_settings  # the one place a bench run picks its broker

    started = time.perf_counter()
    code = code_version()
    bars = {s: load_many(p) for s, p in files.items()}
    length = min(len(b) for b in bars.values()) // 2  # derived markets take a later stretch of the file
    markets = derive_markets(bars, MARKETS, length, base.exchange, base.partitions,
                             balanced=MARKETS % base.partitions == 0)
    with ExitStack() as stack:
        base, broker, home = stack_settings(stack, base, log_dir, kafka)
        settings = run_settings(base, f"{uuid.uuid4().hex[:6]}-soak", list(markets), home)
        asyncio.run(ensure_topics(settings))
        from chaincast.models.build import build_model  # torch, only when the bench runs (not for --help)

        first = next(iter(bars.values()))
        serving = build_model([first[:3000]], "persistence", settings.window, settings.horizon,
                              Registry(home / "registry"), name=settings.model_name)
        asyncio.run(announce(settings, settings.model_name, serving))
        echo(f"soak: broker {broker}; {len(markets)} markets ({', '.join(markets)}), {seconds:.0f}s at max speed, "
             f"the producer at most {LEAD} messages ahead; fetch wait {kafka_options.fetch_max_wait_ms(settings)} ms")
        samples: list[tuple[float, float]] = []
        read: list[tuple[float, float]] = []
        with workers(settings, 1, log_dir) as (worker,):
            worker.wait_for("chaincast_model_loaded_timestamp_seconds", WORKER_START_S)
            feeder = Feeder(settings, markets)
            feeder.thread.start()
            t0 = time.monotonic()
            try:
                while (now := time.monotonic() - t0) < seconds:
                    if not worker.proc.alive():
                        raise RuntimeError(f"the worker exited during the soak; see {log_dir}")
                    if feeder.error is not None:
                        raise RuntimeError(f"the soak's producer failed: {feeder.error}")
                    m = worker.metrics()
                    if m:
                        feeder.done = m.get("chaincast_trade_messages_total", feeder.done)
                        samples.append((now, m.get("chaincast_predictions_total", 0.0)))
                        read.append((now, feeder.done))
                    if len(samples) % max(1, int(window_s / sample_s)) == 0 and samples:
                        echo(f"[soak] t={now:5.0f}s forecasts {samples[-1][1]:,.0f}, messages read "
                             f"{feeder.done:,.0f}, sent {feeder.sent:,}")
                    time.sleep(sample_s)
            finally:
                feeder.stop.set()
                feeder.thread.join(timeout=30)
            rss = worker.rss_mb()
            final_wait = worker.metrics().get("chaincast_fetch_wait_ms")
    result = rates(samples, window_s)
    passed = result["ratio_last_first"] is not None and result["ratio_last_first"] >= GOAL
    return {
        "mode": "soak",
        "broker": broker,
        "seconds": seconds,
        "window_s": window_s,
        "predictions_per_s_first_window": result["first_per_s"],
        "predictions_per_s_last_window": result["last_per_s"],
        "ratio_last_first": result["ratio_last_first"],
        "goal_ratio": GOAL,
        "passed": passed,
        "predictions_per_s_by_window": result["per_window"],
        "forecasts": samples[-1][1] if samples else 0.0,
        "messages_read": read[-1][1] if read else 0.0,
        "messages_sent": feeder.sent,
        "trade_records_per_partition_end": feeder.sent / base.partitions,
        "worker_rss_mb": rss,
        "fetch_max_wait_ms": kafka_options.fetch_max_wait_ms(settings),  # at the start
        "fetch_max_wait_ms_end": final_wait,  # the worker's own, at the end (adaptive on the embedded broker)
        "samples": [[round(t, 2), n] for t, n in samples],
        "machine": machine(),
        "code": code,
        "settings": {"markets": list(markets), "partitions": base.partitions, "window": base.window,
                     "lead": LEAD, "sample_s": sample_s, "trades_per_message": TRADES_PER_BAR},
        "elapsed_s": time.perf_counter() - started,
    }


def soak_table(result: Mapping[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:,.2f}" if isinstance(v, float) else str(v)

    rows = [("broker", result["broker"]),
            (f"forecasts/s, first {result['window_s']:.0f}s", fmt(result["predictions_per_s_first_window"])),
            (f"forecasts/s, last {result['window_s']:.0f}s", fmt(result["predictions_per_s_last_window"])),
            ("last / first (goal >= 0.8)", fmt(result["ratio_last_first"])),
            ("passed", "yes" if result["passed"] else "NO"),
            ("messages read / sent", f"{result['messages_read']:,.0f} / {result['messages_sent']:,}"),
            ("fetch wait at start / end", f"{result['fetch_max_wait_ms']} / {fmt(result['fetch_max_wait_ms_end'])} ms")]
    return "\n".join(["| figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])

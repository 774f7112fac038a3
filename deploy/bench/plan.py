"""What one bench run sends: its sizes, its markets and their synthetic trades.

Everything here is pure (no broker, no processes): the plan of a run, the
markets derived from the real bar files, and the Kafka messages (key, value)
that each phase sends.

Markets. The real symbols of the files come first; more markets are derived
from them: the same minutes (so every market closes its bars at the same
minute boundary, as live markets do) with the prices of a later stretch of the
same file, named ``SYMBOL`` + a number (``BTCUSDT007``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from aiokafka.partitioner import DefaultPartitioner

from chaincast.models.history import TS, symbol_of
from chaincast.models.timeunits import MINUTE_MS
from chaincast.producers.synth import bar_trades, dense_trades
from chaincast.stream.records import Trade, TradeBatch, market_key

TRADES_PER_MESSAGE = 100  # see BENCHMARKS.md: the exchange producer's frames at ~20k trades/s over 4 markets
TRADES_PER_BAR = 500  # a real minute of BTC or ETH: the exchange export shows medians of 430 to 2,444
LATENCY_CLOSES = 2_100  # bar closes timed; at least 2,000 remain once the first second is dropped
CLOSES_PER_S = 40.0  # all markets together, round robin
WARM_S = 1.0  # the first second of every latency phase warms connections and caches: left out
CEILING_MESSAGES = 20_000  # the bare-Faust count needs more messages than a throughput run has to be timed
SCAN_SIZES = (4, 64, 512)
SCAN_RATES = (5.0, 40.0)  # trades/s per market, spread evenly over the markets of a scan size
SCAN_TRADES = 60_000  # trades in each scan size's backlog (all markets together)
SCAN_CLOSES = 400  # timed bar closes per scan size
FRAME_MS = 20  # the exchange producer's linger: one message holds one market's trades of one frame
DERIVED_STRIDE = 997  # bars between the price stretches of markets derived from the same file

GOALS = {"trades_per_s_per_worker": 20_000, "bar_to_redis_ms_p50": 3.0, "bar_to_redis_ms_p99": 10.0,
         "worker_cpu_efficiency_2v1": 0.9, "worker_rss_mb": 250.0, "scan_throughput_drop": 0.2,
         "scan_rss_kb_per_market": 100.0, "ratio_vs_peer": 2.0}


@dataclass(frozen=True)
class BenchPlan:
    """Sizes of one bench run; ``for_duration`` scales the throughput backlog to a time budget."""

    bars_per_market: int  # replayed per market in each throughput run
    latency_closes: int = LATENCY_CLOSES
    closes_per_s: float = CLOSES_PER_S
    trades_per_message: int = TRADES_PER_MESSAGE
    trades_per_bar: int = TRADES_PER_BAR
    markets: int = 4  # one per partition of the default 4: two workers get equal shares
    scaling: bool = True
    scan_sizes: tuple[int, ...] = SCAN_SIZES
    scan_trades: int = SCAN_TRADES
    scan_closes: int = SCAN_CLOSES
    peer: bool = True
    floor: bool = True  # the relays of ``floor``: the latency of the same closes without chaincast
    families: tuple[str, ...] | None = None  # None: every family
    ort_bars: int = 3000  # bars the quick training of each family sees (latency does not depend on it)
    ceiling_messages: int = CEILING_MESSAGES

    @classmethod
    def for_duration(cls, seconds: float, **options: object) -> "BenchPlan":
        # About 5,000 trades per second of budget over the markets, and never fewer bars than a few
        # windows' worth, so that forecasts are made too.
        per_bar = int(options.get("trades_per_bar", TRADES_PER_BAR))  # type: ignore[call-overload]
        markets = int(options.get("markets", 4))  # type: ignore[call-overload]
        bars = int(min(max(seconds * 5_000 / per_bar / markets, 300), 20_000))
        return cls(bars_per_market=bars, **options)  # type: ignore[arg-type]

    def latency_bars(self, markets: int) -> int:
        """Bars each market needs after the throughput backlog for the timed closes."""
        return math.ceil(self.latency_closes / markets) + 2


def files_of(paths: Sequence[Path]) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for p in paths:
        if (sym := symbol_of(p)) is None:
            raise ValueError(f"cannot tell the symbol of {p}: name it like BTCUSDT-1m-....csv")
        files.setdefault(sym, []).append(p)
    return files


def partition_of(exchange: str, symbol: str, partitions: int) -> int:
    """The partition a market's records land on (the producers' default murmur2 partitioner).

    >>> [partition_of("binance", s, 4) for s in ("DOGEUSDT", "BTCUSDT", "SOLUSDT", "ETHUSDT")]
    [0, 1, 2, 3]
    """
    every = list(range(partitions))
    return DefaultPartitioner()(market_key(exchange, symbol).encode(), every, every)


def derive_markets(bars: Mapping[str, np.ndarray], n: int, length: int, exchange: str, partitions: int,
                   balanced: bool = False) -> dict[str, np.ndarray]:
    """``n`` markets of ``length`` bars each (see the module docstring). ``balanced``: exactly
    ``n / partitions`` markets on each partition (``n`` a multiple of ``partitions``), so that
    any split of the partitions between workers is a split of the work."""
    if balanced and n % partitions:
        raise ValueError(f"{n} markets cannot spread evenly over {partitions} partitions")
    sources = list(bars)
    for sym in sources:
        if len(bars[sym]) < length + 1:
            raise ValueError(f"not enough history for {sym}: {len(bars[sym])} bars, need more than {length}")
    per_partition = n // partitions if balanced else n
    taken = [0] * partitions
    out: dict[str, np.ndarray] = {}

    def take(name: str, rows: np.ndarray) -> None:
        p = partition_of(exchange, name, partitions)
        if taken[p] < per_partition:
            taken[p] += 1
            out[name] = rows

    for sym in sources:
        if len(out) < n:
            take(sym, bars[sym][:length])
    k = 0
    while len(out) < n:
        k += 1
        source = sources[k % len(sources)]
        base = bars[source]
        offset = 1 + (k * DERIVED_STRIDE) % (len(base) - length)
        rows = base[:length].copy()
        rows[:, TS + 1:] = base[offset:offset + length, TS + 1:]  # the same minutes, later prices
        take(f"{source}{k:03d}", rows)
        if k > 100 * n:
            raise ValueError(f"could not spread {n} markets over {partitions} partitions")
    return out


def interleave(chunks: Iterable[tuple[int, str, bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """(ts, market, key, value) in event-time order, markets interleaved as a live producer sends them."""
    return [(key, value) for _, _, key, value in sorted(chunks, key=lambda c: (c[0], c[1]))]


def batches(exchange: str, symbol: str, trades: Sequence[Trade], per_message: int) -> Iterable[tuple[int, str, bytes, bytes]]:
    key = market_key(exchange, symbol).encode()
    for i in range(0, len(trades), per_message):
        part = trades[i:i + per_message]
        yield part[0].ts_event, symbol, key, TradeBatch(exchange=exchange, symbol=symbol, trades=part).dumps()


def trade_messages(exchange: str, bars: Mapping[str, np.ndarray], per_message: int,
                   per_bar: int = TRADES_PER_BAR) -> list[tuple[bytes, bytes]]:
    """(key, TradeBatch) of every bar's synthetic trades (``per_bar`` of them, see
    ``producers.synth.dense_trades``), ``per_message`` consecutive trades of one market per
    message, markets interleaved in event-time order."""
    chunks = []
    for sym, rows in bars.items():
        trades = [t for row in rows for t in dense_trades(exchange, sym, row, per_bar)]
        chunks += batches(exchange, sym, trades, per_message)
    return interleave(chunks)


def expected_predictions(bars: Mapping[str, np.ndarray], window: int) -> int:
    """Forecasts the stream makes for these bars: every closed bar (each market's last stays open)
    whose window and warm-up are gap-free (``stream.predict.ready``)."""
    from chaincast.models.features import bar_features, valid_windows

    return int(sum(valid_windows(bar_features(rows[:-1]), window).sum() for rows in bars.values()))


# ---------------------------------------------------------------- timed bar closes


@dataclass(frozen=True)
class Close:
    """One timed bar close: ``closer`` (the first trade of the next minute, alone in its message,
    as a live producer frames a market of tens of trades per second) closes bar ``bar_ts``;
    ``rest`` (the remainder of that next minute's trades) follows half a step later, untimed."""

    symbol: str
    bar_ts: int
    key: bytes
    closer: bytes
    rest: bytes | None


def closes(exchange: str, tail: Mapping[str, np.ndarray], last_ts: Mapping[str, int], count: int,
           per_bar: int | Mapping[str, int], rest: bool = True) -> list[Close]:
    """``count`` closes, markets round robin: market m's i-th close opens ``tail[m][i]``.
    ``rest=False``: the closing trades only (the next bar holds one trade)."""
    symbols = list(tail)
    out: list[Close] = []
    open_ts = dict(last_ts)
    for k in range(count):
        sym = symbols[k % len(symbols)]
        i = k // len(symbols)
        if i >= len(tail[sym]):
            raise ValueError(f"not enough bars of {sym} for {count} closes")
        n = per_bar if isinstance(per_bar, int) else per_bar[sym]
        trades = dense_trades(exchange, sym, tail[sym][i], n)
        key = market_key(exchange, sym).encode()
        remainder = TradeBatch(exchange=exchange, symbol=sym, trades=trades[1:]).dumps() if rest and n > 1 else None
        out.append(Close(sym, open_ts[sym], key, TradeBatch(exchange=exchange, symbol=sym, trades=trades[:1]).dumps(),
                         remainder))
        open_ts[sym] = int(tail[sym][i][TS])
    return out


# ---------------------------------------------------------------- the symbol scan's traffic


def sparse_trades(exchange: str, symbol: str, row: Sequence[float], n: int) -> list[Trade]:
    """A bar's four trades (``producers.synth.bar_trades``) numbered in the ``n``-per-bar id scheme
    of ``dense_trades``, so that a market's ids stay close when its dense trades follow.

    >>> [t.trade_id for t in sparse_trades("binance", "BTCUSDT", [60_000, 10, 12, 9, 11, 8], 300)]
    [300, 301, 302, 303]
    """
    first = int(row[TS]) // MINUTE_MS * n
    return [t.model_copy(update={"trade_id": first + i}) for i, t in enumerate(bar_trades(exchange, symbol, row))]


def warmup_messages(exchange: str, bars: Mapping[str, np.ndarray], per_bar: int) -> list[tuple[bytes, bytes]]:
    """One message per market holding its bars as 4-trade bars (``sparse_trades``): the cheapest
    way to fill the markets' forecast windows."""
    return [(market_key(exchange, sym).encode(),
             TradeBatch(exchange=exchange, symbol=sym,
                        trades=[t for row in rows for t in sparse_trades(exchange, sym, row, per_bar)]).dumps())
            for sym, rows in bars.items()]


def scan_rates(n: int, low: float = SCAN_RATES[0], high: float = SCAN_RATES[1]) -> list[float]:
    """Trades per second of each of ``n`` markets, spread evenly from ``low`` to ``high``.

    >>> [round(r, 2) for r in scan_rates(4)]
    [5.0, 16.67, 28.33, 40.0]
    """
    return [low + (high - low) * i / max(n - 1, 1) for i in range(n)]


@dataclass(frozen=True)
class ScanTraffic:
    """One scan size's messages.

    ``warmup`` fills every market's window: 4-trade bars, a message per market and minute,
    markets interleaved as a replay sends them, ending with the first dense trade of the next
    minute, which closes the last warm-up bar. (One message per market holding all its minutes
    closed tens of thousands of bars in one batch and left that burst in the RSS the scan reads,
    deploy/BENCHMARKS.md.) ``backlog`` continues each market at its own rate (one message per
    FRAME_MS frame: one trade at 5-40 trades/s); ``closes`` open the next minutes, timed."""

    markets: dict[str, np.ndarray]
    per_bar: dict[str, int]
    warmup: list[tuple[bytes, bytes]]
    backlog: list[tuple[bytes, bytes]]
    backlog_trades: int
    backlog_bars: int
    closes: list[Close]


def scan_traffic(exchange: str, bars: Mapping[str, np.ndarray], n: int, warmup_bars: int, total_trades: int,
                 n_closes: int, partitions: int) -> ScanTraffic:
    rates = scan_rates(n)
    share = total_trades / sum(rates)  # seconds of each market's trading in the backlog
    minutes = math.ceil(share / 60) + 2
    markets = derive_markets(bars, n, warmup_bars + minutes + math.ceil(n_closes / n) + 2, exchange, partitions)
    per_bar = {sym: max(round(rate * 60), 4) for sym, rate in zip(markets, rates)}
    warmup, backlog, tails, last_ts = [], [], {}, {}
    trades_sent = bars_closed = 0
    for sym, rows in markets.items():
        key = market_key(exchange, sym).encode()
        history = [t for row in rows[:warmup_bars] for t in sparse_trades(exchange, sym, row, per_bar[sym])]
        live = [t for row in rows[warmup_bars:warmup_bars + minutes] for t in dense_trades(exchange, sym, row, per_bar[sym])]
        quota = max(round(per_bar[sym] / 60 * share), 1)
        warmup += batches(exchange, sym, history + live[:1], 4)  # a minute per message, the last the next minute's first trade
        body = live[1:1 + quota]
        per_message = max(1, round(per_bar[sym] / 60 * FRAME_MS / 1000))
        backlog += batches(exchange, sym, body, per_message)
        trades_sent += len(body)
        opened = len({t.ts_event // MINUTE_MS for t in live[:1 + len(body)]})  # minutes (= rows) the backlog reached
        bars_closed += opened - 1
        used = warmup_bars + opened
        tails[sym] = rows[used:]
        last_ts[sym] = int(rows[used - 1][TS])
    return ScanTraffic(markets, per_bar, interleave(warmup), interleave(backlog), trades_sent, bars_closed,
                       closes(exchange, tails, last_ts, n_closes, per_bar, rest=False))

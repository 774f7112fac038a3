"""Parity and batch-1 latency of every family: onnxruntime vs torch eager.

``python -m chaincast.models.bench --data FILE`` trains each family for a few steps on
real bars (latency does not depend on the weights), exports it and reports
the max abs torch/ONNX difference and the median single-window latency.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from chaincast.models.export import export_onnx, parity, session
from chaincast.models.families import FAMILIES
from chaincast.models.history import load_bars
from chaincast.models.logs import setup_logging
from chaincast.models.train import FitOptions, train

log = logging.getLogger(__name__)


def _median_ms(fn: Any, repeats: int) -> float:
    for _ in range(10):  # warm-up: first runs allocate
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def latency(module: nn.Module, onnx_bytes: bytes, x: np.ndarray, repeats: int = 300) -> dict[str, float]:
    """Median batch-1 latency in ms of torch eager (no_grad) and onnxruntime (1 thread each)."""
    sess = session(onnx_bytes, threads=1)
    xt = torch.from_numpy(x)
    module.eval()

    def run_torch() -> None:
        with torch.no_grad():
            module(xt)

    def run_onnx() -> None:
        sess.run(["y"], {"x": x})

    return {"torch_ms": _median_ms(run_torch, repeats), "onnx_ms": _median_ms(run_onnx, repeats)}


def bench(bars: np.ndarray, window: int = 32) -> list[dict[str, Any]]:
    rows = []
    for family in FAMILIES:
        result = train([bars], family, window, options=FitOptions(max_epochs=1, max_steps_per_epoch=20))
        if not isinstance(result.module, nn.Module):  # lightgbm: trees, no torch twin to compare with
            continue
        onnx_bytes = export_onnx(result.module, result.card)
        x = result.test.x[:512]
        diff = parity(result.module, onnx_bytes, x)
        with torch.no_grad():
            size = float(result.module(torch.from_numpy(x)).abs().max())  # outputs are ~1e-3: also report relative
        times = latency(result.module, onnx_bytes, result.test.x[-1:])
        rows.append({"family": family, "parity": diff, "parity_rel": diff / size, **times,
                     "speedup": times["torch_ms"] / times["onnx_ms"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--bars", type=int, default=8000, help="first N bars used for the quick training")
    parser.add_argument("--window", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    setup_logging(logging.INFO, "%(message)s")
    for r in bench(load_bars(args.data)[: args.bars], args.window):
        log.info("%-12s parity %.2e (relative %.1e)  torch %.3f ms  onnxruntime %.3f ms  x%.1f",
                 r["family"], r["parity"], r["parity_rel"], r["torch_ms"], r["onnx_ms"], r["speedup"])


if __name__ == "__main__":
    main()

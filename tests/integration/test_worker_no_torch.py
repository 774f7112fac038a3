"""A serving worker runs on onnxruntime alone: no libtorch in its address space, even with a model loaded.

Also the model hash's one writer: ``announce`` only puts the update on the topic; the
hash appears once the worker accepted the version.
"""

from __future__ import annotations

import pytest

import time
from pathlib import Path

import redis

from chaincast.stream.redis_layout import RedisLayout
from tests.integration.conftest import start_worker

pytestmark = pytest.mark.one_broker  # what a worker process maps, whatever the broker


def wait_for(what: str, condition, timeout: float = 300.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_worker_serves_without_torch(served, tmp_path: Path, record_property) -> None:
    settings, entry = served()
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    model_key = RedisLayout.of(settings).model(settings.model_name)
    assert r.hget(model_key, "version") is None  # announced, but no worker accepted it yet
    worker = start_worker(settings, tmp_path)
    try:
        wait_for("the worker to accept the model", lambda: r.hget(model_key, "version") == entry.version)
        maps = Path(f"/proc/{worker.pid}/maps").read_text()
        status = Path(f"/proc/{worker.pid}/status").read_text()
    finally:
        assert worker.stop(timeout=60) == 0
        r.close()
    assert "libonnxruntime" in maps or "onnxruntime_pybind11_state" in maps  # the check can see a library
    assert "libtorch" not in maps
    rss_mb = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024
    record_property("worker_rss_mb", round(rss_mb))

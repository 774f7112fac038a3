"""Reading the processes' Prometheus endpoints (for `chaincast up`'s status line and `bench`)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import defaultdict

from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families


def serve_metrics(port: int, host: str = "127.0.0.1") -> int:
    """Expose this process's metrics on ``host``; port 0 picks a free one. Returns the port."""
    server, _thread = start_http_server(port, addr=host)
    return server.server_port


def scrape_samples(port: int, timeout: float = 1.0) -> list[tuple[str, dict[str, str], float]]:
    """Every sample (name, labels, value) of one endpoint; [] if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return []
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def scrape(port: int, timeout: float = 1.0) -> dict[str, float]:
    """Sum every sample by name (labels folded) from one endpoint; {} if it does not answer."""
    out: dict[str, float] = defaultdict(float)
    for name, _labels, value in scrape_samples(port, timeout):
        out[name] += value
    return dict(out)

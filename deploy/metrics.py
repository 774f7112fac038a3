"""Reading the processes' Prometheus endpoints (for `chaincast up`'s status line and `bench`)."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Sequence

from prometheus_client.parser import text_string_to_metric_families

from chaincast.stream.health import serve_http


def serve_metrics(port: int, host: str = "127.0.0.1") -> int:
    """Expose this process's metrics (and the /livez, /readyz probes) on ``host``; port 0 picks a free one."""
    return serve_http(port, host)


def scrape_samples(port: int, timeout: float = 1.0,
                   names: Sequence[str] = ()) -> list[tuple[str, dict[str, str], float]]:
    """Every sample (name, labels, value) of one endpoint, or only those of ``names`` (the client
    library then collects only their metrics: a poll costs the process less); [] if it does not answer."""
    query = f"?{urllib.parse.urlencode({'name[]': list(names)}, doseq=True)}" if names else ""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics{query}", timeout=timeout) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return []
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def scrape(port: int, timeout: float = 1.0, names: Sequence[str] = ()) -> dict[str, float]:
    """Sum every sample by name (labels folded) from one endpoint, or only ``names``; {} if it does not answer."""
    out: dict[str, float] = defaultdict(float)
    for name, _labels, value in scrape_samples(port, timeout, names):
        out[name] += value
    return dict(out)

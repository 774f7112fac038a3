"""Every Prometheus query of the committed dashboards, ready to send to Prometheus.

Used by the parse test (``tests/deploy/test_dashboards.py``) and by
``deploy/prometheus/verify_dashboards.py``, which runs them against a real
Prometheus. Grafana's own variables are expanded the way Grafana would:
``$__rate_interval`` to a fixed window, ``$symbol`` to one market, ``$vol_forecaster`` to the
volatility forecaster ``volatility:h5`` and ``$fee_horizon`` to 5 blocks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DASHBOARD_DIR = Path(__file__).parent / "dashboards"


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str  # the panel title, or "annotation: <name>"
    expr: str  # as written in the dashboard, variables unexpanded


def panel_queries(dashboard: dict) -> Iterator[PanelQuery]:
    """Targets of every panel (rows' nested panels included) and every Prometheus annotation."""
    title = dashboard["title"]
    stack = list(dashboard.get("panels", []))
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield PanelQuery(title, panel.get("title", ""), target["expr"])
    for ann in dashboard.get("annotations", {}).get("list", []):
        if ann.get("expr"):
            yield PanelQuery(title, f"annotation: {ann['name']}", ann["expr"])


def variable_metrics(dashboard: dict) -> Iterator[tuple[str, str]]:
    """(variable name, metric) of each ``label_values(metric, label)`` variable."""
    for var in dashboard.get("templating", {}).get("list", []):
        definition = var.get("definition", "")
        if definition.startswith("label_values("):
            yield var["name"], definition.removeprefix("label_values(").split(",")[0].strip()


def load_dashboards(directory: Path = DASHBOARD_DIR) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


def all_queries(directory: Path = DASHBOARD_DIR) -> list[PanelQuery]:
    return [pq for d in load_dashboards(directory) for pq in panel_queries(d)]


def expand(expr: str, rate_interval: str = "1m", symbol: str = "BTCUSDT", fee_horizon: str = "5",
           job: str = "chaincast", vol_forecaster: str = "volatility:h5") -> str:
    """Grafana's variables as Grafana would fill them (``job``: the scrape job of deploy/prometheus).

    >>> expand('rate(x{job=~"$job",symbol="$symbol"}[$__rate_interval])')
    'rate(x{job=~"chaincast",symbol="BTCUSDT"}[1m])'
    """
    return (expr.replace("$__rate_interval", rate_interval).replace("$symbol", symbol)
            .replace("$fee_horizon", fee_horizon).replace("$job", job).replace("$vol_forecaster", vol_forecaster))

"""The dashboards and alert rules: built from code, every query parses, the rules' unit tests pass."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from prometheus_client import REGISTRY, generate_latest

from chaincast.deploy.grafana import build
from chaincast.deploy.grafana.queries import all_queries, expand, load_dashboards, variable_metrics
from tests.deploy.conftest import require

PROM_DIR = Path(build.__file__).parents[1] / "prometheus"


def test_committed_dashboards_match_the_code() -> None:
    assert build.main(["--check"]) == 0, "run: python -m chaincast.deploy.grafana.build"


def test_dashboards_cover_overview_forecasts_models() -> None:
    titles = {d["uid"] for d in load_dashboards()}
    assert titles == {"chaincast-overview", "chaincast-forecasts", "chaincast-models"}
    for d in load_dashboards():
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{d['title']}: duplicate panel ids"
        for p in d["panels"]:
            assert p["targets"], f"{d['title']} / {p['title']}: a panel without a query"


def test_every_panel_query_parses_with_promtool(tmp_path: Path) -> None:
    promtool = require("promtool")
    queries = all_queries()
    assert len(queries) >= 30
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expand(q.expr)} for i, q in enumerate(queries)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(queries)} rules found" in run.stdout


def test_queries_name_only_metrics_chaincast_defines() -> None:
    """A typo in a metric name would parse and show nothing: check every name against the code."""
    import chaincast.producers.chain  # noqa: F401 - registers the producers' metrics
    import chaincast.producers.exchange  # noqa: F401
    import chaincast.stream.lag  # noqa: F401
    import chaincast.stream.metrics  # noqa: F401

    defined = set(re.findall(r"^# TYPE (\S+)", generate_latest(REGISTRY).decode(), re.M))
    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    used = {m for q in all_queries() for m in re.findall(r"\bchaincast_[a-z0-9_]+", q.expr)}
    used |= {m for d in load_dashboards() for _, m in variable_metrics(d)}
    unknown = sorted(m for m in used if not any(m.removesuffix(s) in defined for s in suffixes if m.endswith(s)))
    assert not unknown, f"metrics no chaincast module defines: {unknown}"


def test_alert_rules_check_and_unit_tests() -> None:
    promtool = require("promtool")
    check = subprocess.run([promtool, "check", "rules", str(PROM_DIR / "alerts.yml")], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=PROM_DIR, capture_output=True,
                           text=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "SUCCESS" in tests.stdout


def test_prometheus_configs_are_valid() -> None:
    promtool = require("promtool")
    for name in ("prometheus.yml", "prometheus.compose.yml"):
        run = subprocess.run([promtool, "check", "config", name], cwd=PROM_DIR, capture_output=True, text=True)
        assert run.returncode == 0, f"{name}: {run.stdout}{run.stderr}"

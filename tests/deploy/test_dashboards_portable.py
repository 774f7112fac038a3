"""The dashboards import into any Grafana: a datasource variable with `__inputs`, the scrape job a variable."""

from __future__ import annotations

import json
import re

from chaincast.deploy.grafana.queries import all_queries, load_dashboards


def datasources(node: object) -> list[dict]:
    """Every datasource reference anywhere in a dashboard."""
    if isinstance(node, dict):
        found = [node["datasource"]] if isinstance(node.get("datasource"), dict) else []
        return found + [d for v in node.values() for d in datasources(v)]
    if isinstance(node, list):
        return [d for v in node for d in datasources(v)]
    return []


def test_no_hard_coded_datasource_and_an_input_to_choose_one() -> None:
    for d in load_dashboards():
        assert [i["name"] for i in d["__inputs"]] == ["DS_PROMETHEUS"]
        names = [v["name"] for v in d["templating"]["list"]]
        assert names[:2] == ["datasource", "job"], names
        refs = {json.dumps(ds, sort_keys=True) for ds in datasources(d)}
        allowed = {json.dumps({"type": "prometheus", "uid": "${datasource}"}, sort_keys=True),
                   json.dumps({"type": "grafana", "uid": "-- Grafana --"}, sort_keys=True)}
        assert refs <= allowed, refs - allowed


def test_every_chaincast_series_is_scoped_to_the_job_variable() -> None:
    queries = all_queries()
    for pq in queries:
        for selector in re.findall(r"\b(?:chaincast_[a-z0-9_]+|up)(\{[^}]*\})?", pq.expr):
            assert 'job=~"$job"' in selector, (pq.panel, pq.expr)
    assert not any('job="chaincast"' in pq.expr for pq in queries)

"""deploy/grafana/webhook-ingest.json: valid JSON Grafana can import, whose panels
query only metrics the service defines, and every one of them (issue 17, item 5)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests import promtool
from tests.metric_names import PROMETHEUS_SERIES, exported_names, promql_metric_names

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "webhook-ingest.json"


def panels() -> list[dict]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def exprs() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def test_the_dashboard_is_an_importable_grafana_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "web_job", "worker_job"} <= variables
    for panel in panels():
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_every_query_uses_only_metrics_the_service_defines():
    used = {name for expr in exprs() for name in promql_metric_names(expr)}
    assert used - (exported_names() | PROMETHEUS_SERIES) == set()


def test_every_exported_metric_family_has_a_panel():
    used = {name for expr in exprs() for name in promql_metric_names(expr)}
    families = {
        name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
        for name in exported_names()
    }
    shown = {
        name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for name in used
    }
    assert families - shown == set()


def test_every_query_is_valid_promql(tmp_path):
    """promtool parses each query (Grafana's variables filled in as Grafana would)
    as a recording rule: a typo in PromQL fails here, not on a blank panel."""
    filled = [
        re.sub(r"\$__rate_interval", "5m", expr)
        .replace("$web_job", "webhook-ingest-web")
        .replace("$worker_job", "webhook-ingest-worker")
        for expr in exprs()
    ]
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(filled)]
    (tmp_path / "queries.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )

    checked = promtool.run("check", "rules", "queries.yml", cwd=tmp_path)

    assert checked.returncode == 0, checked.stdout + checked.stderr

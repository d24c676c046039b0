"""deploy/prometheus/alerts.yml: valid for promtool, its unit tests
(alerts_test.yml) pass, every metric it names is one the service defines, and the
dead-letter rule fires where the README's old one never did (issue 17, item 5)."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import yaml

from tests import promtool
from tests.metric_names import PROMETHEUS_SERIES, exported_names, promql_metric_names

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"


def run(*args: str, cwd: Path = RULES.parent) -> subprocess.CompletedProcess:
    return promtool.run(*args, cwd=cwd)


def rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_rules_pass_promtool_check():
    checked = run("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_the_rules_pass_their_unit_tests():
    tested = run("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_metric_in_the_rules_is_one_the_service_exports():
    defined = exported_names() | PROMETHEUS_SERIES
    used = {name for rule in rules() for name in promql_metric_names(rule["expr"])}

    assert used, "no metric names found: the parser is broken"
    assert used - defined == set()
    # the backlog is alerted on, by the name the receiver exports
    assert {"webhook_queue_length", "webhook_broker_up"} <= used


def test_the_name_check_catches_a_name_that_does_not_exist():
    used = promql_metric_names(
        'sum by (provider) (rate(webhook_deliveries_recieved_total{outcome="x"}[5m])) > 0'
        " and on() max(webhook_queue_length) > 1"
    )
    assert used == {"webhook_deliveries_recieved_total", "webhook_queue_length"}
    assert used - exported_names() == {"webhook_deliveries_recieved_total"}


def test_the_dead_letter_rule_fires_where_the_readmes_old_one_never_did(tmp_path):
    # The README's rule, as written before issue 17: two expressions joined by
    # `and`, whose sides share no label set, so the intersection is always empty.
    old = "webhook_dead_letter_depth > 0 and increase(webhook_dead_letters_total[1h]) > 10"
    new = next(rule["expr"] for rule in rules() if rule["alert"] == "WebhookDeadLettersGrowing")
    compared = {
        "groups": [
            {
                "name": "compare",
                "rules": [{"alert": "Old", "expr": old}, {"alert": "New", "expr": new}],
            }
        ]
    }
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(compared))
    (tmp_path / "rules_test.yml").write_text(
        textwrap.dedent(
            """\
            rule_files: [rules.yml]
            evaluation_interval: 1m
            tests:
              - interval: 1m
                input_series:
                  - series: 'webhook_dead_letter_depth{job="webhook-ingest-web", instance="r1"}'
                    values: '0+1x60'
                  - series: 'webhook_dead_letters_total{job="webhook-ingest-worker", instance="w1",
                      provider="replicate", reason="unmatched"}'
                    values: '0+1x60'
                alert_rule_test:
                  - {eval_time: 60m, alertname: Old, exp_alerts: []}
                  - {eval_time: 60m, alertname: New, exp_alerts: [{exp_labels: {}}]}
            """
        )
    )

    tested = run("test", "rules", "rules_test.yml", cwd=tmp_path)

    assert tested.returncode == 0, tested.stdout + tested.stderr

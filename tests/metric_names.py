"""Metric names: every sample name the service can export (from
webhook_ingest.observability.metrics, the one place they are defined) and the
metric names a PromQL expression uses, so the alert rules (deploy/prometheus)
and the dashboard (deploy/grafana) can be checked against the code."""

from __future__ import annotations

import re

from prometheus_client import Counter, Histogram

from webhook_ingest.observability import metrics

# Prometheus' own series for every target.
PROMETHEUS_SERIES = frozenset({"up"})

_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"bool", "offset", "inf", "nan"}
)


def exported_names() -> frozenset[str]:
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            names.add(f"{value._name}_total")
        elif isinstance(value, Histogram):
            names.update(f"{value._name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif isinstance(value, metrics.ScrapeGauge):
            names.add(value.name)
    return frozenset(names)


def promql_metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression (or a Grafana one: $variables and
    $__rate_interval are left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # grouping labels
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names

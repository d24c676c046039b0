"""GET /metrics: the receiver's counters, all processes summed, plus gauges read from Redis.

Under gunicorn every worker process counts into its own files in
`PROMETHEUS_MULTIPROC_DIR` (gunicorn.conf.py creates and wipes it), and a
scrape, answered by whichever process, sums them all. Without that directory
(one process: tests, `flask run`) the in-memory registry is the whole truth.

Unauthenticated like every Prometheus target: it holds counts, never ids or
payloads. Put it behind the network boundary you scrape from.
"""

from __future__ import annotations

import logging
import os
import time

import redis
from flask import Blueprint, Response, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

from webhook_ingest.operations.depths import read_depths

log = logging.getLogger(__name__)

blueprint = Blueprint("metrics", __name__)


class RedisGauges:
    """Depths that belong to Redis, not to a process: read at scrape time, never summed."""

    def __init__(self, services) -> None:
        self._services = services

    def collect(self):
        up = GaugeMetricFamily("webhook_redis_up", "1 if the state Redis answered this scrape.")
        try:
            depths = read_depths(self._services.redis, self._services.providers)
        except redis.RedisError as exc:
            log.warning("metrics: redis unavailable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        letters = GaugeMetricFamily(
            "webhook_dead_letter_depth", "Dead letters kept (DEAD_LETTER_TTL_SECONDS)."
        )
        letters.add_metric([], depths.dead_letters)
        yield letters
        jobs = GaugeMetricFamily(
            "webhook_tracked_jobs",
            "Unfinished jobs the orphan poller watches, by provider.",
            labels=["provider"],
        )
        for name, count in depths.tracked_jobs.items():
            jobs.add_metric([name], count)
        yield jobs
        journal = GaugeMetricFamily(
            "webhook_journal_depth",
            "Acknowledged deliveries not finished yet (applied, ignored or parked).",
        )
        journal.add_metric([], depths.journal)
        yield journal
        age = GaugeMetricFamily(
            "webhook_journal_oldest_age_seconds",
            "Age of the journal's first-due unfinished delivery; 0 when the journal is empty.",
        )
        oldest = depths.journal_oldest_received_at
        age.add_metric([], max(0.0, time.time() - oldest / 1000) if oldest else 0.0)
        yield age


class _ThisProcess:
    """The default registry, for the single-process case."""

    def collect(self):
        return REGISTRY.collect()


def scrape_registry(services) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(RedisGauges(services))
    return registry


@blueprint.get("/metrics")
def metrics():
    registry = scrape_registry(current_app.extensions["webhook_ingest"])
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

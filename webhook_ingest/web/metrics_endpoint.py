"""GET /metrics: the receiver's counters, all processes summed, plus gauges read from
Redis and the broker (the queues' backlog) at scrape time.

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
from celery import Celery
from flask import Blueprint, Response, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

from celeryconfig import QUEUE, UNMATCHED_QUEUE
from webhook_ingest.observability import metrics as families
from webhook_ingest.operations.depths import read_depths, read_queue_lengths

log = logging.getLogger(__name__)

blueprint = Blueprint("metrics", __name__)


@blueprint.record_once
def _start_series(state) -> None:
    """The counters the alert rules watch, at 0 from this process's start
    (families.start_receiver_series says why)."""
    families.start_receiver_series(state.app.extensions["webhook_ingest"].providers)


# Every queue a worker consumes (celeryconfig): first attempts, and retries of
# deliveries whose job was not registered yet.
QUEUES = (QUEUE, UNMATCHED_QUEUE)


def _gauge(spec: families.ScrapeGauge) -> GaugeMetricFamily:
    return GaugeMetricFamily(spec.name, spec.documentation, labels=list(spec.labels) or None)


class RedisGauges:
    """Depths that belong to Redis, not to a process: read at scrape time, never summed."""

    def __init__(self, services) -> None:
        self._services = services

    def collect(self):
        up = _gauge(families.REDIS_UP)
        try:
            depths = read_depths(self._services.redis, self._services.providers)
        except redis.RedisError as exc:
            log.warning("metrics: redis unavailable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        letters = _gauge(families.DEAD_LETTER_DEPTH)
        letters.add_metric([], depths.dead_letters)
        yield letters
        jobs = _gauge(families.TRACKED_JOBS)
        for name, count in depths.tracked_jobs.items():
            jobs.add_metric([name], count)
        yield jobs
        journal = _gauge(families.JOURNAL_DEPTH)
        journal.add_metric([], depths.journal)
        yield journal
        age = _gauge(families.JOURNAL_OLDEST_AGE)
        oldest = depths.journal_oldest_received_at
        age.add_metric([], max(0.0, time.time() - oldest / 1000) if oldest else 0.0)
        yield age


class BrokerGauges:
    """The backlog: messages waiting on each broker queue, read at scrape time.

    When the broker does not answer (within depths.BROKER_TIMEOUT_SECONDS) the
    scrape still succeeds: webhook_broker_up is 0 and no webhook_queue_length series
    is exported, rather than a 0 that would read as "no backlog"."""

    def __init__(self, celery_app: Celery) -> None:
        self._celery = celery_app

    def collect(self):
        up = _gauge(families.BROKER_UP)
        try:
            lengths = read_queue_lengths(self._celery, QUEUES)
        except Exception as exc:  # kombu, amqp, redis and socket errors alike
            log.warning("metrics: broker unavailable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        queued = _gauge(families.QUEUE_LENGTH)
        for queue, length in lengths.items():
            queued.add_metric([queue], length)
        yield queued


class _ThisProcess:
    """The default registry, for the single-process case."""

    def collect(self):
        return REGISTRY.collect()


def scrape_registry(services, celery_app: Celery | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(RedisGauges(services))
    if celery_app is not None:
        registry.register(BrokerGauges(celery_app))
    return registry


@blueprint.get("/metrics")
def metrics():
    registry = scrape_registry(
        current_app.extensions["webhook_ingest"], current_app.extensions["celery"]
    )
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

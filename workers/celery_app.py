"""The worker's Celery app, built from settings (as pallets/flask's examples/celery
builds it in `celery_init_app`): celeryconfig's settings, the tasks in
workers.tasks, JSON logs and the worker's metrics signals."""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import setup_logging

from webhook_ingest.config import Settings, load_settings
from webhook_ingest.handoff import broker
from webhook_ingest.observability import json_logs

# Connects the worker's metrics signals and start-up checks; inert in processes
# that only publish.
from workers import metrics_server, startup_checks  # noqa: F401

TASK_MODULES = ("workers.tasks", "workers.consistency_tasks")


def create_celery_app(settings: Settings | None = None) -> Celery:
    """The app `celery -A workers` runs; the current app, which the tasks bind to."""
    app = broker.celery_app(settings or load_settings(), set_as_current=True)
    app.conf.imports = TASK_MODULES
    return app


@setup_logging.connect
def _json_logs(loglevel=None, **_: object) -> None:
    """Worker and beat log like the receiver: one JSON object per line (LOG_FORMAT)."""
    json_logs.configure(loglevel)
    # Celery's own "Task ... received" / "succeeded" lines say again, without the
    # delivery's ids, what workers.tasks logs once per delivery; two formatted
    # lines per task cost the worker measurably (docs/benchmarks.md). Failures,
    # retries and warnings from these loggers still come through.
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))

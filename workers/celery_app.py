"""The Celery application: configured from celeryconfig.py, tasks in workers.tasks."""

import logging

from celery import Celery
from celery.signals import setup_logging

from webhook_ingest.observability import json_logs

# Connects the worker's metrics signals; inert in processes that only publish.
from workers import metrics_server  # noqa: F401

app = Celery("webhook_ingest")
app.config_from_object("celeryconfig")
app.conf.imports = ("workers.tasks", "workers.consistency_tasks")


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

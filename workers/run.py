"""`python -m workers.run worker [celery options]`: the Celery worker, metrics ready.

prometheus_client picks its multiprocess mode once, when first imported, and
the `celery` command imports it (through Flower's command plugin) before it
loads our app. So when WORKER_METRICS_PORT asks for metrics, the prefork
worker's shared metrics directory is prepared here, before `celery` starts,
and every process of the worker inherits it (workers.metrics_server serves it).
"""

from __future__ import annotations

import os
import shutil
import sys

from webhook_ingest.config import ConfigError, load_settings
from webhook_ingest.observability import multiprocess_dir


def main(argv: list[str]) -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None  # the variable named, in one line
    if settings.worker_metrics_port:
        multiprocess_dir.prepare("worker")
    celery = shutil.which("celery") or os.path.join(os.path.dirname(sys.executable), "celery")
    os.execv(celery, [celery, "-A", "workers", *argv])  # noqa: S606 - argv, no shell


if __name__ == "__main__":
    main(sys.argv[1:] or ["worker"])

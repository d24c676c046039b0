"""The Celery app a process that only publishes uses (the receiver, the CLI's replay).

Built from settings, configured by celeryconfig like the worker's own app
(workers.celery_app builds that one on top of this), with no tasks: deliveries
are sent by task name, so publishing never imports the worker.
"""

from __future__ import annotations

from celery import Celery

import celeryconfig
from webhook_ingest.config import Settings


def celery_app(settings: Settings, *, set_as_current: bool = False) -> Celery:
    app = Celery("webhook_ingest", set_as_current=set_as_current)
    app.conf.update(celeryconfig.celery_settings(settings))
    return app

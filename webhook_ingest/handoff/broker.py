"""The Celery app a process that only publishes uses (the receiver, the CLI's replay).

Built from settings, configured by celeryconfig like the worker's own app
(workers.celery_app builds that one on top of this), with no tasks: deliveries
are sent by task name, so publishing never imports the worker.
"""

from __future__ import annotations

import functools

from celery import Celery
from kombu.serialization import registry
from kombu.utils import json as kombu_json

import celeryconfig
from webhook_ingest.config import Settings


def utf8_json() -> None:
    """Celery's "json" serializer, writing non-ASCII text as UTF-8.

    kombu's escapes it (json.dumps' ensure_ascii): every such character of a
    delivery's body became a six-byte \\uXXXX, inside the Redis transport's
    base64, so a 1 MiB body of non-ASCII text made a 4 MiB message (issue 14,
    finding 4). Same name, content type and decoder: any reader of the messages
    reads them as before. kombu's registry is the process's; every app built
    here (receiver, worker, beat, CLI) calls this.
    """
    registry.register(
        "json",
        functools.partial(kombu_json.dumps, ensure_ascii=False),
        kombu_json.loads,
        content_type="application/json",
        content_encoding="utf-8",
    )


def celery_app(settings: Settings, *, set_as_current: bool = False) -> Celery:
    utf8_json()
    app = Celery("webhook_ingest", set_as_current=set_as_current)
    app.conf.update(celeryconfig.celery_settings(settings))
    return app

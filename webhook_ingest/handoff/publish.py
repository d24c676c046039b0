"""Make a verified delivery durable on the broker, or say that we could not.

The receiver answers 2xx only after this returns. The publish retry policy in
celeryconfig bounds how long a broker outage can hold a request (~1 s), after
which the caller answers 503 and the provider retries.
"""

from __future__ import annotations

import logging

from celery import Celery

from celeryconfig import INGEST_TASK
from webhook_ingest.handoff.delivery import Delivery

log = logging.getLogger(__name__)


class EnqueueFailed(Exception):
    """The broker did not take the delivery."""


def enqueue(celery_app: Celery, delivery: Delivery, queue: str | None = None) -> None:
    """Publish `delivery` on `queue` (the task's default queue unless given)."""
    options = {"queue": queue} if queue else {}
    try:
        celery_app.send_task(
            INGEST_TASK,
            args=[delivery.to_message()],
            argsrepr=argsrepr(delivery),
            **options,
        )
    except Exception as exc:  # any failure to publish must become a 503, never a 2xx
        log.warning("enqueue failed: %s", type(exc).__name__)
        raise EnqueueFailed(type(exc).__name__) from None


def argsrepr(delivery: Delivery) -> str:
    """How the task's arguments show in Flower and logs: readable, never the payload."""
    return f"<{delivery.provider} delivery {delivery.delivery_id}>"

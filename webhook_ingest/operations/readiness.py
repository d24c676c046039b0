"""Is this process ready to accept deliveries? The state Redis and the broker answer.

Used by `GET /readyz`; `GET /healthz` checks nothing on purpose (a Redis outage
must not get the receiver restarted).
"""

from __future__ import annotations

from celery import Celery

from webhook_ingest.services import Services

TIMEOUT_SECONDS = 1.0


def unavailable(services: Services, celery_app: Celery) -> dict[str, str]:
    """The dependencies that did not answer, each with the error's name; empty when ready."""
    problems = {}
    try:
        services.redis.ping()
    except Exception as exc:
        problems["redis"] = type(exc).__name__
    try:
        with celery_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=TIMEOUT_SECONDS)
    except Exception as exc:
        problems["broker"] = type(exc).__name__
    return problems

"""Celery tasks. Small on purpose: the work is in webhook_ingest.ingest."""

from __future__ import annotations

import logging
import time

import redis
from celery.exceptions import SoftTimeLimitExceeded

from webhook_ingest.delivery import Delivery
from webhook_ingest.enqueue import INGEST_TASK
from webhook_ingest.ingest import ingest
from webhook_ingest.jobs import JobMismatch, JobNotFound
from webhook_ingest.provider_http import ProviderError, ProviderUnavailable
from webhook_ingest.providers import PayloadError
from workers import retries
from workers.celery_app import app
from workers.services import services

log = logging.getLogger(__name__)


@app.task(name=INGEST_TASK, bind=True, max_retries=None)
def ingest_delivery(self, message: dict) -> str:
    """Apply one verified delivery; retry what may heal, park what will not."""
    delivery = Delivery.from_message(message)
    svc = services()
    context = {
        "provider": delivery.provider,
        "delivery_id": delivery.delivery_id,
        "job_id": delivery.job_id,
        "attempt": self.request.retries + 1,
    }
    try:
        result = ingest(delivery, svc)
    except JobNotFound as exc:
        waited = time.time() - delivery.received_at / 1000
        if waited >= svc.settings.unmatched_retry_seconds:
            return _park(delivery, "unmatched", exc, self.request.retries + 1)
        log.info("job not registered yet, retrying", extra=context)
        raise self.retry(countdown=retries.countdown(self.request.retries)) from None
    except ProviderUnavailable as exc:
        if self.request.retries + 1 >= retries.PROVIDER_MAX_ATTEMPTS:
            return _park(delivery, "provider_unavailable", exc, self.request.retries + 1)
        log.warning("provider unavailable, retrying: %s", exc, extra=context)
        wait = retries.countdown(self.request.retries, exc.retry_after)
        raise self.retry(countdown=wait) from None
    except (PayloadError, JobMismatch, ProviderError) as exc:
        return _park(delivery, type(exc).__name__, exc, self.request.retries + 1)
    except (redis.RedisError, SoftTimeLimitExceeded) as exc:
        # Our own infrastructure: keep trying for as long as it takes.
        log.warning("transient failure, retrying: %s", type(exc).__name__, extra=context)
        raise self.retry(countdown=retries.countdown(self.request.retries)) from None
    except Exception as exc:
        # A bug must not lose the delivery: park it for replay after the fix.
        log.exception("unexpected error", extra=context)
        return _park(delivery, "error", exc, self.request.retries + 1)
    log.info("delivery %s", result.outcome.value, extra={**context, "job_id": result.job_id})
    return result.outcome.value


def _park(delivery: Delivery, reason: str, error: Exception, attempts: int) -> str:
    letter_id = services().dead_letters.park(delivery, reason, str(error), attempts)
    log.warning(
        "delivery parked as dead letter %s: %s",
        letter_id,
        reason,
        extra={"provider": delivery.provider, "delivery_id": delivery.delivery_id},
    )
    return "parked"

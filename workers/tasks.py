"""Celery tasks. Small on purpose: the work is in webhook_ingest.ingest."""

from __future__ import annotations

import logging
import time
from typing import NoReturn

import redis
from celery import shared_task
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded

from celeryconfig import (
    ADOPT_MAPPINGS_TASK,
    INGEST_TASK,
    POLL_JOB_TASK,
    POLL_ORPHANS_TASK,
    QUEUE,
    REDRIVE_JOURNAL_TASK,
    UNMATCHED_QUEUE,
)
from webhook_ingest.clock import now_ms
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.handoff.publish import EnqueueFailed, argsrepr, enqueue
from webhook_ingest.ingest import IngestOutcome, ingest
from webhook_ingest.observability.metrics import (
    DEAD_LETTERED,
    DELIVERIES_PROCESSED,
    JOURNAL_REDRIVEN,
    ORPHAN_POLLS,
    ORPHANS_DETECTED,
    RECEIVE_TO_APPLIED_SECONDS,
    UNMATCHED_DELIVERIES,
)
from webhook_ingest.operations.adoption import MappingAdoption
from webhook_ingest.operations.orphan_poller import OrphanPoller
from webhook_ingest.providers import PayloadError
from webhook_ingest.providers.http import ProviderAuthError, ProviderError, ProviderUnavailable
from webhook_ingest.services import Services
from webhook_ingest.state.job_registry import JobMismatch, JobNotFound
from webhook_ingest.state.replica_acks import ReplicasBehind
from workers import retries
from workers.services import services

log = logging.getLogger(__name__)


@shared_task(name=INGEST_TASK, bind=True, max_retries=None)
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
        outcome = _ingest(self, delivery, svc, context)
        # REDIS_MIN_REPLICA_ACKS: Celery acknowledges the message once this returns
        # (acks_late), so whatever the task wrote — the applied state, a parked dead
        # letter, the journal record's removal — must be on enough replicas first,
        # or a failover could lose it with the message already gone. A WAIT after a
        # write of its own covers every earlier write (webhook_ingest.state.replica_acks);
        # none is sent when the setting is 0.
        svc.worker_acks.confirm()
        return outcome
    except (Retry, Reject):  # Celery's own ways of ending a task
        raise
    except ReplicasBehind:
        # Not acknowledged: the retry finds the delivery finished on the master
        # (a duplicate) and acknowledges it once the replicas confirm; after a
        # failover that lost the apply, the journal record is back and it applies.
        log.warning("delivery finished but not yet on enough replicas, retrying", extra=context)
        DELIVERIES_PROCESSED.labels(delivery.provider, "retried").inc()
        _retry(self, svc, delivery, retries.countdown(svc.settings, self.request.retries))
    except Exception as exc:
        # Anything that escaped after the delivery was taken (parking while Redis
        # refuses writes, say) must not be acknowledged away: Celery would ack a
        # task that raised. Retry it; its journal record stays.
        log.warning("could not finish delivery, retrying: %s", type(exc).__name__, extra=context)
        DELIVERIES_PROCESSED.labels(delivery.provider, "retried").inc()
        _retry(self, svc, delivery, retries.countdown(svc.settings, self.request.retries))


def _ingest(task, delivery: Delivery, svc: Services, context: dict) -> str:
    attempts = task.request.retries + 1
    if delivery.journaled and not svc.journal.is_open(delivery):
        # An earlier copy finished it (a redrive raced its original, or a worker
        # died between applying and acking): nothing to do but say it came.
        if delivery.job_id:
            svc.state.note_finished_copy(delivery.job_id, delivery.delivery_id, now_ms())
        DELIVERIES_PROCESSED.labels(delivery.provider, "duplicate").inc()
        log.info("delivery duplicate: already finished", extra=context)
        return "duplicate"
    try:
        result = ingest(delivery, svc)
    except JobNotFound as exc:
        UNMATCHED_DELIVERIES.labels(delivery.provider).inc()
        # a replay waits its own window: the operator may be registering the job now
        waited = time.time() - (delivery.replayed_at or delivery.received_at) / 1000
        if waited >= svc.settings.unmatched_retry_seconds:
            return _park(delivery, "unmatched", exc, attempts)
        log.info("job not registered yet, retrying", extra=context)
        DELIVERIES_PROCESSED.labels(delivery.provider, "retried").inc()
        # on a queue of its own: a flood of these must not delay matched deliveries
        countdown = retries.countdown(svc.settings, task.request.retries)
        _retry(task, svc, delivery, countdown, queue=UNMATCHED_QUEUE)
    except ProviderUnavailable as exc:
        if attempts >= retries.PROVIDER_MAX_ATTEMPTS:
            return _park(delivery, "provider_unavailable", exc, attempts)
        log.warning("provider unavailable, retrying: %s", exc, extra=context)
        DELIVERIES_PROCESSED.labels(delivery.provider, "retried").inc()
        wait = retries.countdown(svc.settings, task.request.retries, exc.retry_after)
        _retry(task, svc, delivery, wait)
    except ProviderAuthError as exc:
        # Our API key is missing or refused: no retry can succeed until an operator
        # fixes it; parked at once under a reason that says so, for replay after.
        return _park(delivery, "provider_auth", exc, attempts)
    except (PayloadError, JobMismatch, ProviderError) as exc:
        return _park(delivery, type(exc).__name__, exc, attempts)
    except (redis.RedisError, SoftTimeLimitExceeded) as exc:
        # Our own infrastructure: keep trying for as long as it takes.
        log.warning("transient failure, retrying: %s", type(exc).__name__, extra=context)
        DELIVERIES_PROCESSED.labels(delivery.provider, "retried").inc()
        _retry(task, svc, delivery, retries.countdown(svc.settings, task.request.retries))
    except Exception as exc:
        # A bug must not lose the delivery: park it for replay after the fix.
        log.exception("unexpected error", extra=context)
        return _park(delivery, "error", exc, attempts)
    outcome = result.outcome.value
    DELIVERIES_PROCESSED.labels(delivery.provider, outcome).inc()
    if result.outcome is IngestOutcome.APPLIED and not delivery.replayed_at:
        # a replay's age is the operator's, not the pipeline's
        RECEIVE_TO_APPLIED_SECONDS.labels(delivery.provider).observe(
            max(0.0, time.time() - delivery.received_at / 1000)
        )
    context.update(job_id=result.job_id, outcome=outcome)
    if result.applied and result.applied.broadcast:
        context["status"] = result.applied.broadcast.get("status")
    log.info("delivery %s", outcome, extra=context)
    return outcome


def _retry(
    task, svc: Services, delivery: Delivery, countdown: float, queue: str = QUEUE
) -> NoReturn:
    """Retry an acknowledged delivery without ever dropping it.

    On `queue`: the main one, or UNMATCHED_QUEUE for a job not registered yet
    (celeryconfig). Named every time, or a retry would follow the queue its
    attempt came from: a delivery whose job got registered meanwhile belongs
    back on the main queue.

    Its journal record is first made due after the retry had its chance, so beat
    does not redrive a delivery that is only waiting (best effort: with Redis
    away the record keeps its due time, and a redrive is a harmless duplicate).

    Celery raises Reject(requeue=False) when the retry cannot be published, e.g.
    while the broker's Redis is away. requeue=False removes the message from
    kombu's `unacked` if Redis is back by the time the worker rejects it (a short
    restart): the acknowledged delivery would be gone. requeue=True puts it back
    on the queue instead, or, if Redis is still away, leaves it in `unacked` for
    the visibility timeout (tests/faults/test_faults_redis.py).
    """
    if delivery.journaled:
        try:
            svc.journal.postpone(delivery, countdown)
        except redis.RedisError:
            pass
    try:
        # task.retry publishes a new message whose argsrepr (what Flower and task
        # events show) defaults to the repr of the whole delivery, body and headers:
        # every attempt shows the same short form the receiver gave the first one.
        shown = {"argsrepr": argsrepr(delivery), "kwargsrepr": "{}"}
        raise task.retry(countdown=countdown, queue=queue, **shown) from None
    except Reject as rejected:
        raise Reject(rejected.reason, requeue=True) from None


def _park(delivery: Delivery, reason: str, error: Exception, attempts: int) -> str:
    letter_id = services().dead_letters.park(delivery, reason, str(error), attempts)
    DEAD_LETTERED.labels(delivery.provider, reason).inc()
    DELIVERIES_PROCESSED.labels(delivery.provider, "parked").inc()
    log.warning(
        "delivery parked as dead letter %s: %s",
        letter_id,
        reason,
        extra={
            "provider": delivery.provider,
            "delivery_id": delivery.delivery_id,
            "job_id": delivery.job_id,
            "dead_letter_id": letter_id,
            "reason": reason,
            "attempts": attempts,
        },
    )
    return "parked"


# -- orphan recovery (scheduled by beat) ---------------------------------------


@shared_task(name=POLL_ORPHANS_TASK)
def poll_orphans() -> dict[str, int]:
    """One tick: enqueue one poll per stale job, at most the per-provider budget."""
    svc = services()
    poller = OrphanPoller(svc)
    interval = svc.settings.orphan_poll_interval_seconds
    spacing = 60 / svc.settings.orphan_polls_per_minute
    enqueued = {}
    for provider, job_ids in poller.take_due().items():
        for index, job_id in enumerate(job_ids):
            # spread over the interval (within the countdown cap) to honour the rate
            countdown = min(index * spacing, retries.max_countdown(svc.settings))
            poll_job.apply_async(
                args=[provider, job_id],
                countdown=countdown,
                # a poll nobody ran within an interval of its turn is dropped: the next
                # tick asks again (counted from the turn, or the last of a full budget,
                # due almost an interval after the tick, would have no time to run)
                expires=countdown + interval,
            )
        enqueued[provider] = len(job_ids)
        ORPHANS_DETECTED.labels(provider).inc(len(job_ids))
        log.info("orphan poll tick: %d %s jobs to poll", len(job_ids), provider)
    return enqueued


@shared_task(name=POLL_JOB_TASK, bind=True, max_retries=3)
def poll_job(self, provider: str, job_id: str) -> str:
    svc = services()
    try:
        outcome = OrphanPoller(svc).poll(provider, job_id)
    except redis.RedisError as exc:
        raise self.retry(countdown=retries.countdown(svc.settings, self.request.retries)) from exc
    ORPHAN_POLLS.labels(provider, outcome.value).inc()
    log.info(
        "orphan poll %s",
        outcome.value,
        extra={"provider": provider, "job_id": job_id, "outcome": outcome.value},
    )
    return outcome.value


@shared_task(name=ADOPT_MAPPINGS_TASK)
def adopt_mappings() -> int:
    """Index mappings written directly by other services (plain HSET)."""
    adoption = MappingAdoption(services()).adopt()
    if adoption.adopted:
        log.info("adopted %d job mappings", adoption.adopted)
    return adoption.adopted


# -- the delivery journal (scheduled by beat) -------------------------------------


@shared_task(name=REDRIVE_JOURNAL_TASK, bind=True)
def redrive_journal(self) -> int:
    """Publish again every acknowledged delivery that is overdue (handoff.journal)."""
    svc = services()
    overdue = svc.journal.take_overdue(svc.settings.journal_redrive_budget)
    sent = 0
    for delivery in overdue:
        try:
            enqueue(self.app, delivery)
        except EnqueueFailed:
            # the records taken are due again one period later: the next tick tries
            log.warning("journal redrive stopped: the broker refused a delivery")
            break
        sent += 1
        JOURNAL_REDRIVEN.labels(delivery.provider).inc()
        log.warning(
            "delivery redriven from the journal",
            extra={
                "provider": delivery.provider,
                "delivery_id": delivery.delivery_id,
                "job_id": delivery.job_id,
            },
        )
    return sent

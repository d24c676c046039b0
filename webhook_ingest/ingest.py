"""Turn one verified delivery into at most one applied state update.

No Celery here: the task in workers.tasks adds retries and parking around this,
and the benchmark calls it directly as the plain-loop ceiling.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any

from webhook_ingest import strict_json
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.providers import PayloadError
from webhook_ingest.services import Services
from webhook_ingest.state.job_registry import JobNotFound
from webhook_ingest.state.store import ApplyResult, Outcome

log = logging.getLogger(__name__)


class IngestOutcome(enum.StrEnum):
    APPLIED = Outcome.APPLIED.value
    UNCHANGED = Outcome.UNCHANGED.value
    TERMINAL = Outcome.TERMINAL.value
    DUPLICATE = Outcome.DUPLICATE.value
    IGNORED = "ignored"  # an event type that says nothing about a job we track


@dataclass(frozen=True)
class IngestResult:
    outcome: IngestOutcome
    job_id: str | None = None
    applied: ApplyResult | None = None


def parse_payload(body: str) -> dict[str, Any]:
    try:
        payload = strict_json.loads(body)
    except ValueError:
        raise PayloadError("body is not JSON") from None
    if not isinstance(payload, dict):
        raise PayloadError("body is not a JSON object")
    return payload


def ingest(delivery: Delivery, services: Services) -> IngestResult:
    """Raises JobNotFound (retry later), PayloadError / JobMismatch / ProviderError."""
    provider = services.providers.get(delivery.provider)
    if provider is None:
        raise PayloadError(f"unknown provider {delivery.provider!r:.40}")
    payload = parse_payload(delivery.body)
    try:
        external_id = provider.external_id(payload)
        job = services.jobs.resolve(provider.name, delivery.job_id, external_id)
    except (PayloadError, JobNotFound):
        # Event types we do not track may name no job at all: recorded, not errors.
        if provider.waits_for_mapping(payload):
            raise
        return _ignored(delivery, services, payload)

    update = provider.to_update(payload, job)
    if update is None:
        return _ignored(delivery, services, payload, job.job_id)
    applied = services.state.apply(
        update,
        delivery.delivery_id,
        journal_member=delivery.journal_member if delivery.journaled else None,
    )
    return IngestResult(IngestOutcome(applied.outcome.value), job.job_id, applied)


def _ignored(delivery: Delivery, services: Services, payload: dict, job_id: str | None = None):
    event_type = payload.get("type") if isinstance(payload.get("type"), str) else None
    services.ignored.record(delivery, job_id, event_type)
    return IngestResult(IngestOutcome.IGNORED, job_id)

"""OpenAI: one project-level webhook URL; the event carries only the object id.

An event names its family in its type (`response.*`, `batch.*`,
`fine_tuning.job.*`, `video.*`, `eval.run.*`; see openai_objects) and the object
by id. The outcome is not in the event, so the worker fetches the object where it
lives (`GET {base}/batches/{id}`, ...); that fetch may be retried (the task backs
off on 429/5xx), and if the object is gone (stored responses can vanish for
`store=false` projects) the event type alone decides the status. A poll has only
the id, whose prefix says the family.
"""

from __future__ import annotations

import logging
from typing import Any

from webhook_ingest.providers import http
from webhook_ingest.providers.base import (
    JobRef,
    JobRequest,
    NotPollable,
    PayloadError,
    Provider,
    WebhookConfig,
    job_update,
    require_str,
)
from webhook_ingest.providers.openai_objects import (
    EVENT_STATUS,
    FAMILIES,
    RESPONSE,
    Family,
    family_of_event,
    family_of_id,
)
from webhook_ingest.state.job_update import SOURCE_ORPHAN_POLL, SOURCE_WEBHOOK, JobStateUpdate

log = logging.getLogger(__name__)

# The events a project's webhook endpoint should subscribe to for our jobs.
WEBHOOK_EVENTS = tuple(event_type for family in FAMILIES for event_type in family.events)


def path_segment(object_id: str) -> str:
    """`object_id` as one URL path segment: every reserved character quoted, so an
    id (which POST /jobs and other services may set to anything) cannot point a
    request sent with our API key at another path. `.` and `..` cannot be quoted
    past URL normalization (requests unquotes `%2E`), and no OpenAI id is one."""
    try:
        return http.path_segment(object_id)
    except http.ProviderError:
        # named as a bad id of the delivery or mapping, not as a provider failure
        raise PayloadError(f"{object_id!r} is not an OpenAI object id") from None


def update_from_object(
    family: Family, document: dict[str, Any], job: JobRef, source: str
) -> JobStateUpdate:
    """Map a fetched object of `family` (openai_objects) to our update."""
    external_id = require_str(document, "id")
    observed = family.observe(document)
    return job_update(
        OpenAIProvider.name,
        job,
        observed.status,
        source=source,
        provider_status=observed.provider_status,
        external_job_id=external_id,
        progress=observed.progress,
        result=observed.result,
        error_message=observed.error_message,
    )


def update_from_response(response: dict[str, Any], job: JobRef, source: str) -> JobStateUpdate:
    """Map a Response object (providers.md, OpenAI table) to our update."""
    return update_from_object(RESPONSE, response, job, source)


class OpenAIProvider(Provider):
    name = "openai"
    default_base_url = "https://api.openai.com/v1"
    # OpenAI retries a delivery for up to 72 hours; an hour more covers the first
    # attempt's own delay and the back-off's last step landing late.
    delivery_retry_window_seconds = 73 * 3600

    def external_id(self, payload: dict[str, Any]) -> str:
        return require_str(payload, "data", "id")

    def waits_for_mapping(self, payload: dict[str, Any]) -> bool:
        event_type = payload.get("type") if isinstance(payload, dict) else None
        return isinstance(event_type, str) and event_type in EVENT_STATUS

    def fetch_object(self, family: Family, object_id: str) -> dict[str, Any]:
        """GET the object where its family lives. Raises NotPollable for a family
        its id alone cannot fetch, http.Provider* errors otherwise."""
        if family.collection is None:
            raise NotPollable(
                f"OpenAI {family.name} objects cannot be fetched by their id alone: "
                "such jobs are updated by webhook only"
            )
        url = f"{self.base_url}/{family.collection}/{path_segment(object_id)}"
        _, body = http.get_json(self.session, url)
        return body

    def to_update(self, payload: dict[str, Any], job: JobRef) -> JobStateUpdate | None:
        event_type = require_str(payload, "type")
        family = family_of_event(event_type)
        if family is None:
            return None  # recorded by the caller, not an error: OpenAI adds event types
        object_id = self.external_id(payload)
        if family.collection is not None:
            try:
                document = self.fetch_object(family, object_id)
                return update_from_object(family, document, job, SOURCE_WEBHOOK)
            except http.ProviderNotFound:
                log.warning(
                    "openai object gone; status from event type",
                    extra={"job_id": job.job_id, "event_type": event_type},
                )
        if event_type not in EVENT_STATUS:
            return None  # recorded by the caller, not an error: OpenAI adds event types
        status, error_message = EVENT_STATUS[event_type]
        return self.update(
            job,
            status,
            source=SOURCE_WEBHOOK,
            provider_status=event_type,  # the event is all the provider said
            external_job_id=object_id,
            error_message=error_message,
        )

    # -- connector --------------------------------------------------------------

    def get_webhook_config(self, job_id: str) -> WebhookConfig:
        # OpenAI webhooks are configured per project (dashboard or
        # /v1/webhook_endpoints), not per request: one URL for every job.
        return WebhookConfig(
            url=self.webhook_url(), events=WEBHOOK_EVENTS, auth="standard-webhooks"
        )

    def submit(self, job: JobRequest) -> str:
        """POST /responses in background mode, our job id in the metadata."""
        params = dict(job.params)
        metadata = {**params.pop("metadata", {}), "job_id": job.job_id}
        body = {**params, "background": True, "metadata": metadata}
        response = http.post_json(self.session, f"{self.base_url}/responses", json=body)
        return require_str(response, "id")

    def poll_job_status(self, job: JobRef) -> JobStateUpdate:
        """Ask about the job's object where its id's prefix says it lives."""
        family = family_of_id(job.external_job_id)
        document = self.fetch_object(family, job.external_job_id)
        return update_from_object(family, document, job, SOURCE_ORPHAN_POLL)

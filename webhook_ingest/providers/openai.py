"""OpenAI: one project-level webhook URL; the event carries only the object id.

Response events are sent for `background: true` responses. The output is not in
the event, so the worker fetches `GET {base}/responses/{id}`; that fetch may be
retried (the task backs off on 429/5xx), and if the response is gone (stored data
can vanish for `store=false` projects) the event type alone decides the status.
"""

from __future__ import annotations

import logging
from typing import Any

from webhook_ingest.providers import http
from webhook_ingest.providers.base import (
    JobRef,
    JobRequest,
    PayloadError,
    Provider,
    WebhookConfig,
    job_update,
    require_str,
)
from webhook_ingest.state.job_update import (
    COMPLETED,
    FAILED,
    PROCESSING,
    SOURCE_ORPHAN_POLL,
    SOURCE_WEBHOOK,
    JobStateUpdate,
)

log = logging.getLogger(__name__)

# The events a project's webhook endpoint should subscribe to for our jobs.
WEBHOOK_EVENTS = (
    "response.completed",
    "response.failed",
    "response.cancelled",
    "response.incomplete",
)

# Events whose object is not a response: the event type is the whole story.
_EVENT_STATUS: dict[str, tuple[str, str | None]] = {
    "batch.completed": (COMPLETED, None),
    "batch.failed": (FAILED, "batch failed"),
    "batch.expired": (FAILED, "batch expired"),
    "batch.cancelled": (FAILED, "batch cancelled"),
    "fine_tuning.job.succeeded": (COMPLETED, None),
    "fine_tuning.job.failed": (FAILED, "fine-tuning job failed"),
    "fine_tuning.job.cancelled": (FAILED, "fine-tuning job cancelled"),
    "eval.run.succeeded": (COMPLETED, None),
    "eval.run.failed": (FAILED, "eval run failed"),
    "eval.run.canceled": (FAILED, "eval run canceled"),
    # Used only when the response itself can no longer be fetched.
    "response.completed": (COMPLETED, None),
    "response.failed": (FAILED, "response failed"),
    "response.cancelled": (FAILED, "cancelled"),
    "response.incomplete": (FAILED, "response incomplete"),
}


def update_from_response(response: dict[str, Any], job: JobRef, source: str) -> JobStateUpdate:
    """Map a Response object (providers.md, OpenAI table) to our update."""
    external_id = require_str(response, "id")
    status = response.get("status")
    progress: int | None = None
    result = None
    error_message = None
    if status == "queued":
        state, progress = PROCESSING, 0
    elif status == "in_progress":
        state = PROCESSING
    elif status == "completed":
        state, result = COMPLETED, response.get("output")
    elif status == "failed":
        error = response.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        state, error_message = FAILED, str(message or "response failed")
    elif status == "cancelled":
        state, error_message = FAILED, "cancelled"
    elif status == "incomplete":
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        state, error_message = FAILED, f"incomplete: {reason}" if reason else "incomplete"
    else:
        raise PayloadError(f"unknown OpenAI response status {status!r:.40}")
    return job_update(
        OpenAIProvider.name,
        job,
        state,
        source=source,
        provider_status=status,
        external_job_id=external_id,
        progress=progress,
        result=result,
        error_message=error_message,
    )


class OpenAIProvider(Provider):
    name = "openai"
    default_base_url = "https://api.openai.com/v1"

    def external_id(self, payload: dict[str, Any]) -> str:
        return require_str(payload, "data", "id")

    def waits_for_mapping(self, payload: dict[str, Any]) -> bool:
        event_type = payload.get("type") if isinstance(payload, dict) else None
        return isinstance(event_type, str) and event_type in _EVENT_STATUS

    def fetch_response(self, response_id: str) -> dict[str, Any]:
        _, body = http.get_json(self.session, f"{self.base_url}/responses/{response_id}")
        return body

    def to_update(self, payload: dict[str, Any], job: JobRef) -> JobStateUpdate | None:
        event_type = require_str(payload, "type")
        if event_type not in _EVENT_STATUS and not event_type.startswith("response."):
            return None  # recorded by the caller, not an error: OpenAI adds event types
        object_id = self.external_id(payload)
        if event_type.startswith("response."):
            try:
                return update_from_response(self.fetch_response(object_id), job, SOURCE_WEBHOOK)
            except http.ProviderNotFound:
                if event_type not in _EVENT_STATUS:
                    return None
                log.warning(
                    "openai response gone; status from event type",
                    extra={"job_id": job.job_id, "event_type": event_type},
                )
        if event_type not in _EVENT_STATUS:
            return None  # recorded by the caller, not an error: OpenAI adds event types
        status, error_message = _EVENT_STATUS[event_type]
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
        return update_from_response(
            self.fetch_response(job.external_job_id), job, SOURCE_ORPHAN_POLL
        )

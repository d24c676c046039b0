"""Stability AI: no webhooks at all, so a job is recovered by polling only.

Async generations answer `{"id": ...}`; `GET {base}/v2beta/results/{id}` (with
`Accept: application/json`) answers 202 while running, 200 with the base64
artifact and a `finish_reason` when done (CONTENT_FILTERED is a failure), 403
when the generation was flagged by content moderation, 400 when the request is
invalid, 404 when unknown or expired (results are kept 24 hours). Errors answer
`{"id", "name", "errors": [...]}`.
"""

from __future__ import annotations

import re
from typing import Any

from webhook_ingest.providers import http
from webhook_ingest.providers.base import (
    JobRef,
    JobRequest,
    PayloadError,
    Provider,
    WebhookConfig,
    require_str,
)
from webhook_ingest.state.job_update import (
    COMPLETED,
    FAILED,
    PROCESSING,
    SOURCE_ORPHAN_POLL,
    JobStateUpdate,
)

# Answers that end the job, with what each means when Stability names no error.
DEFINITIVE_ERRORS = {403: "content moderation", 400: "invalid request"}
_ERROR_TEXT_LIMIT = 500


def _error_name(exc: http.ProviderError) -> str:
    """Stability's own name for the error (`content_moderation`), else what the status means."""
    name = (exc.answer or {}).get("name")
    return name if isinstance(name, str) and name else DEFINITIVE_ERRORS[exc.status]


def _error_text(exc: http.ProviderError) -> str:
    errors = (exc.answer or {}).get("errors")
    said = "; ".join(e for e in errors if isinstance(e, str)) if isinstance(errors, list) else ""
    text = f"Stability AI: {_error_name(exc)} (HTTP {exc.status})" + (f": {said}" if said else "")
    return text if len(text) <= _ERROR_TEXT_LIMIT else text[: _ERROR_TEXT_LIMIT - 1] + "…"


# A path of plain segments (e.g. /v2beta/image-to-video): no `..`, query or fragment
# may redirect the request our API key travels with. \Z: `$` lets a newline through.
_ENDPOINT = re.compile(r"^(?:/[A-Za-z0-9][A-Za-z0-9._-]*)+\Z")


class StabilityProvider(Provider):
    name = "stability"
    default_base_url = "https://api.stability.ai"
    # No webhooks, so no delivery ids to remember: the default window is never used.

    def supports_webhooks(self) -> bool:
        return False

    def get_webhook_config(self, job_id: str) -> WebhookConfig | None:
        return None

    # Nothing is ever received from Stability: the receiver answers 404 before
    # these could be reached, and they say so if called anyway.
    def external_id(self, payload: dict[str, Any]) -> str:
        raise PayloadError("Stability AI sends no webhooks")

    def to_update(self, payload: dict[str, Any], job: JobRef) -> JobStateUpdate | None:
        raise PayloadError("Stability AI sends no webhooks")

    def submit(self, job: JobRequest) -> str:
        """POST a multipart generation request to `params["endpoint"]` (e.g.
        `/v2beta/image-to-video`); `params["data"]` are form fields and
        `params["files"]` file parts, as requests takes them."""
        endpoint = job.params.get("endpoint")
        if not isinstance(endpoint, str) or not _ENDPOINT.match(endpoint):
            raise ValueError("a Stability job needs 'endpoint', a path such as /v2beta/...")
        answer = http.post_json(
            self.session,
            f"{self.base_url}{endpoint}",
            data=job.params.get("data") or {},
            # multipart even without files, as the API requires
            files=job.params.get("files") or {"none": ""},
        )
        return require_str(answer, "id")

    def poll_job_status(self, job: JobRef) -> JobStateUpdate:
        generation_id = http.path_segment(job.external_job_id or "")
        try:
            status, body = http.get_json(
                self.session, f"{self.base_url}/v2beta/results/{generation_id}"
            )
        except http.ProviderError as exc:
            if exc.status not in DEFINITIVE_ERRORS:
                raise
            # Asking again gets the same answer until the result expires (404):
            # the job ends now, with Stability's reason.
            return self.update(
                job,
                FAILED,
                source=SOURCE_ORPHAN_POLL,
                provider_status=_error_name(exc),
                error_message=_error_text(exc),
            )
        # Its own word for how the job stands: the status while running, then the reason.
        said = body.get("status") if status == 202 else body.get("finish_reason")
        if status == 202:  # {"id", "status": "in-progress"}
            state, observed = PROCESSING, {}
        elif said == "SUCCESS":
            state, observed = COMPLETED, {"result": body}
        elif said == "CONTENT_FILTERED":
            state, observed = FAILED, {"error_message": "content filtered"}
        else:
            raise PayloadError(f"unknown Stability finish_reason {said!r:.40}")
        provider_status = said if isinstance(said, str) else None
        return self.update(
            job, state, source=SOURCE_ORPHAN_POLL, provider_status=provider_status, **observed
        )

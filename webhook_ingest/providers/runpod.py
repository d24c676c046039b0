"""RunPod serverless: `"webhook"` in the `/run` body; the delivery is the job's status object.

RunPod signs nothing and sends no headers of ours, so a secret token in the
webhook URL's path is the only proof, checked by the base class's UrlTokenVerifier:
`{WEBHOOK_BASE_URL}/webhook/runpod/{job_id}/{token}`. The token is the job's own,
an HMAC of the job id under `WEBHOOK_URL_SECRET_RUNPOD` (issue 14, finding 7), so
one job's URL proves nothing for another; `WEBHOOK_URL_TOKEN_RUNPOD`, one token
for every job, is still accepted while set, as a migration path only.
That URL is a secret: it is never logged here, and must not be by proxies either.
A token proves who called, not when: there is no timestamp or delivery id, so the
receiver de-duplicates on the body, which RunPod resends unchanged (twice, 10 s apart).

API (`RUNPOD_BASE_URL`, default https://api.runpod.ai/v2): `POST {base}/{endpoint}/run`
answers `{"id", "status"}`, `GET {base}/{endpoint}/status/{id}` the status object.
The endpoint is not part of the job id, so submit records it
(providers.poll_targets); `RUNPOD_ENDPOINT_ID`, if set, is the default for
submits without one and for polling jobs that others registered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from webhook_ingest.config import ConfigError, Settings
from webhook_ingest.providers import http
from webhook_ingest.providers.base import (
    JobRef,
    JobRequest,
    PayloadError,
    Provider,
    WebhookConfig,
    env_name,
    job_update,
    require_str,
)
from webhook_ingest.providers.poll_targets import PollTargets
from webhook_ingest.state.job_update import (
    COMPLETED,
    FAILED,
    PROCESSING,
    SOURCE_ORPHAN_POLL,
    SOURCE_WEBHOOK,
    JobStateUpdate,
)

if TYPE_CHECKING:
    from redis import Redis

# \Z, not `$`, which also matches before a trailing newline
_ENDPOINT_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")
# Unreserved URL characters: the token is a path segment, sent and matched as is.
_URL_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9._~-]+\Z")

# status -> (our status, progress, error message)
_STATUS: dict[str, tuple[str, int | None, str | None]] = {
    "IN_QUEUE": (PROCESSING, 0, None),
    "IN_PROGRESS": (PROCESSING, None, None),
    "COMPLETED": (COMPLETED, None, None),
    "FAILED": (FAILED, None, "job failed"),
    "CANCELLED": (FAILED, None, "cancelled"),
    "TIMED_OUT": (FAILED, None, "timed out"),
}


def update_from_status(job_status: dict[str, Any], job: JobRef, source: str) -> JobStateUpdate:
    """Map a RunPod status object (webhook body or status answer) to our update."""
    external_id = require_str(job_status, "id")
    raw = job_status.get("status")
    mapped = _STATUS.get(raw) if isinstance(raw, str) else None
    if mapped is None:
        raise PayloadError(f"unknown RunPod status {raw!r:.40}")
    status, progress, error_message = mapped
    if raw == "FAILED" and job_status.get("error"):
        error_message = str(job_status["error"])
    return job_update(
        RunPodProvider.name,
        job,
        status,
        source=source,
        provider_status=raw,
        external_job_id=external_id,
        progress=progress,
        result=job_status.get("output") if raw == "COMPLETED" else None,
        error_message=error_message,
    )


class RunPodProvider(Provider):
    name = "runpod"
    configuration_hint = "WEBHOOK_URL_SECRET_RUNPOD"
    default_base_url = "https://api.runpod.ai/v2"
    poll_target_field = "endpoint_id"

    def checked_poll_target(self, value: str) -> str:
        if not _ENDPOINT_ID.match(value):
            raise ValueError("expected a RunPod endpoint id (A-Z a-z 0-9 _ -)")
        return value

    def configuration_warnings(self) -> list[str]:
        warnings = super().configuration_warnings()
        if self.enabled and not self.setting("_ENDPOINT_ID"):
            warnings.append(
                "no RUNPOD_ENDPOINT_ID: runpod jobs this service did not submit can be "
                "polled only when registered with their endpoint_id (POST /jobs)"
            )
        return warnings

    # The status object carries the output inline: base64 images of several MB are
    # normal, at the scale of RunPod's own request limits (10 MB for /run, 20 MB
    # for /runsync).
    default_max_body_bytes = 20 * 1024 * 1024
    # POST {base}/{endpoint}/retry/{id} runs a FAILED or TIMED_OUT job again under
    # the same id: its COMPLETED then arrives after our `failed`.
    retries_under_same_id = True
    # RunPod retries a failed delivery twice, 10 s apart: 20 s. Ten minutes is
    # thirty times that, and also what the replay floor (twice
    # WEBHOOK_TOLERANCE_SECONDS, Provider.delivery_dedup_seconds) gives by default.
    delivery_retry_window_seconds = 600

    def __init__(
        self,
        settings: Settings,
        environ: Mapping[str, str] | None = None,
        *,
        redis: Redis | None = None,
    ) -> None:
        super().__init__(settings, environ, redis=redis)
        self._check_url_tokens()

    # -- receiving --------------------------------------------------------------

    def signature_verifier(self) -> None:
        """RunPod signs nothing: the URL token added by the base class is the proof."""
        if self.environ.get(env_name(self.name, prefix="WEBHOOK_SECRET_"), "").strip():
            raise ConfigError(
                "WEBHOOK_SECRET_RUNPOD: RunPod signs nothing; "
                "set WEBHOOK_URL_SECRET_RUNPOD (per-job URL tokens) instead"
            )
        return None

    def _check_url_tokens(self) -> None:
        """Fail at start on a configuration RunPod's deliveries could never pass."""
        if self.verifier is not None and not self.takes_url_token:
            raise ConfigError(
                "RunPod sends no headers we choose: a URL token is its only proof "
                "(WEBHOOK_URL_SECRET_RUNPOD; WEBHOOK_URL_TOKEN_RUNPOD while migrating)"
            )
        if any(not _URL_SAFE_TOKEN.match(token) for token in self._url_tokens()):
            raise ConfigError(
                "WEBHOOK_URL_TOKEN_RUNPOD: tokens go into URLs; use only A-Z a-z 0-9 . _ ~ - "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )

    def _url_tokens(self) -> list[str]:
        return self.environ.get(env_name(self.name, prefix="WEBHOOK_URL_TOKEN_"), "").split()

    def external_id(self, payload: dict[str, Any]) -> str:
        return require_str(payload, "id")

    def to_update(self, payload: dict[str, Any], job: JobRef) -> JobStateUpdate:
        return update_from_status(payload, job, SOURCE_WEBHOOK)

    # -- connector --------------------------------------------------------------

    def get_webhook_config(self, job_id: str) -> WebhookConfig:
        """The URL carries the job's token (or, with only the shared token set, that
        one): treat the result as a secret."""
        check = self.url_token_check()
        if check is None:
            raise ConfigError(
                "neither WEBHOOK_URL_SECRET_RUNPOD nor WEBHOOK_URL_TOKEN_RUNPOD is set: "
                "RunPod's webhooks could not be verified"
            )
        # RunPod has no event filter: one call when the job reaches a final status.
        token = check.token_for(job_id)
        return WebhookConfig(url=self.webhook_url(job_id, token), events=(), auth="url-token")

    def submit(self, job: JobRequest) -> str:
        """`params`: `input`, optionally `endpoint_id` and RunPod's other `/run` fields
        (`policy`, `s3Config`)."""
        params = dict(job.params)
        endpoint = self._endpoint(params.pop("endpoint_id", None))
        if not isinstance(params.get("input"), dict):
            raise ValueError("a RunPod job needs 'input', an object")
        body = {**params, "webhook": self.get_webhook_config(job.job_id).url}
        targets = PollTargets(self.redis)  # before the POST: no Redis, no job started
        answer = http.post_json(self.session, f"{self.base_url}/{endpoint}/run", json=body)
        job_id = require_str(answer, "id")
        targets.remember(self.name, job_id, endpoint)
        return job_id

    def poll_job_status(self, job: JobRef) -> JobStateUpdate:
        external_id = job.external_job_id
        recorded = PollTargets(self.redis).for_job(
            self.name, job.job_id, external_id, "endpoint_id"
        )
        endpoint = recorded or self.setting("_ENDPOINT_ID")
        if not endpoint or not _ENDPOINT_ID.match(endpoint):
            raise http.ProviderError(
                f"no RunPod endpoint recorded for job {external_id} and RUNPOD_ENDPOINT_ID unset"
            )
        _, job_status = http.get_json(
            self.session, f"{self.base_url}/{endpoint}/status/{http.path_segment(external_id)}"
        )
        return update_from_status(job_status, job, SOURCE_ORPHAN_POLL)

    def _endpoint(self, given: Any) -> str:
        endpoint = given or self.setting("_ENDPOINT_ID")
        if not isinstance(endpoint, str) or not _ENDPOINT_ID.match(endpoint):
            raise ValueError("a RunPod job needs 'endpoint_id' (or RUNPOD_ENDPOINT_ID)")
        return endpoint

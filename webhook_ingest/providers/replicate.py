"""Replicate: per-prediction webhook URL, Standard Webhooks signatures.

The payload is the prediction object itself (same as GET /predictions/{id}).
`output`/`logs` events are throttled and may arrive out of order; the state
function ignores anything after a terminal status, so this module only maps.
Inputs, outputs and logs of API predictions are deleted after an hour, which is
why an orphan is polled within minutes, not hours.

`REPLICATE_BASE_URL` means what it means to replicate-python: the host root
(`https://api.replicate.com`), under which every path starts with `/v1`. A
value that already ends in `/v1` (this service's own meaning before, and the
form of the API's documented URLs) is taken as it is, so both reach
`{host}/v1/predictions/{id}`.
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

# The official client's tqdm pattern (replicate/prediction.py); last match wins.
# (\d{1,3} rather than \d+: a percentage, and int() of thousands of digits raises)
_TQDM_LINE = re.compile(r"^\s*(\d{1,3})%\s*\|.+?\|\s*(\d+)/(\d+)", re.MULTILINE)

_STATUS = {
    "starting": PROCESSING,
    "processing": PROCESSING,
    "succeeded": COMPLETED,
    "failed": FAILED,
    "canceled": FAILED,
    "aborted": FAILED,
}

WEBHOOK_EVENTS = ("start", "output", "logs", "completed")
API_VERSION_PATH = "/v1"
# owner/name, as `POST /v1/models/{owner}/{name}/predictions` takes it (\Z: `$` would
# let a trailing newline through): a model must not add segments or a query.
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*\Z")


def progress_from_logs(logs: Any) -> int | None:
    if not isinstance(logs, str):
        return None
    last = None
    for last in _TQDM_LINE.finditer(logs):  # noqa: B007 - only the last match counts
        pass
    if last is None:
        return None
    return max(0, min(100, int(last.group(1))))


def update_from_prediction(prediction: dict[str, Any], job: JobRef, source: str) -> JobStateUpdate:
    external_id = require_str(prediction, "id")
    raw_status = prediction.get("status")
    status = _STATUS.get(raw_status) if isinstance(raw_status, str) else None
    if status is None:
        raise PayloadError(f"unknown Replicate status {raw_status!r:.40}")

    progress = None
    error_message = None
    result = None
    if raw_status == "starting":
        progress = 0
    elif raw_status == "processing":
        progress = progress_from_logs(prediction.get("logs"))
    elif raw_status == "failed":
        error = prediction.get("error")
        error_message = str(error) if error else "prediction failed"
    elif raw_status in ("canceled", "aborted"):
        error_message = raw_status
    if prediction.get("output") is not None:
        result = prediction["output"]

    return job_update(
        ReplicateProvider.name,
        job,
        status,
        source=source,
        provider_status=raw_status,
        external_job_id=external_id,
        progress=progress,
        result=result,
        error_message=error_message,
    )


class ReplicateProvider(Provider):
    name = "replicate"
    default_base_url = "https://api.replicate.com"
    # Replicate retries only the terminal delivery, "for about a minute" (its docs
    # give no exact figure): an hour is sixty of those, and costs little memory.
    delivery_retry_window_seconds = 3600
    api_key_variable = "REPLICATE_API_KEY (or REPLICATE_API_TOKEN)"

    @property
    def api_url(self) -> str:
        """The versioned API root every call starts from, `{host}/v1`."""
        base = self.base_url
        return base if base.endswith(API_VERSION_PATH) else base + API_VERSION_PATH

    @property
    def api_key(self) -> str | None:
        # REPLICATE_API_TOKEN is the name Replicate's own tools use.
        return self.setting("_API_KEY") or self.environ.get("REPLICATE_API_TOKEN") or None

    # -- receiving --------------------------------------------------------------

    def external_id(self, payload: dict[str, Any]) -> str:
        return require_str(payload, "id")

    def to_update(self, payload: dict[str, Any], job: JobRef) -> JobStateUpdate:
        return update_from_prediction(payload, job, SOURCE_WEBHOOK)

    # -- connector --------------------------------------------------------------

    def get_webhook_config(self, job_id: str) -> WebhookConfig:
        return WebhookConfig(
            url=self.webhook_url(job_id), events=WEBHOOK_EVENTS, auth="standard-webhooks"
        )

    def submit(self, job: JobRequest) -> str:
        """POST /predictions with a version, or /models/{owner}/{name}/predictions."""
        params = dict(job.params)
        model = params.pop("model", None)
        if model:
            if not isinstance(model, str) or not _MODEL.match(model):
                raise ValueError("a Replicate 'model' is owner/name, e.g. black-forest-labs/flux")
            url = f"{self.api_url}/models/{model}/predictions"
        elif params.get("version"):
            url = f"{self.api_url}/predictions"
        else:
            raise ValueError("a Replicate job needs 'version' or 'model' (owner/name)")
        config = self.get_webhook_config(job.job_id)
        body = {**params, "webhook": config.url, "webhook_events_filter": list(config.events)}
        prediction = http.post_json(self.session, url, json=body)
        return require_str(prediction, "id")

    def poll_job_status(self, job: JobRef) -> JobStateUpdate:
        prediction_id = http.path_segment(job.external_job_id or "")
        _, prediction = http.get_json(self.session, f"{self.api_url}/predictions/{prediction_id}")
        return update_from_prediction(prediction, job, SOURCE_ORPHAN_POLL)

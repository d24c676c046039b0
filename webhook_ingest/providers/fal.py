"""fal.ai: a webhook URL per request, Ed25519 signatures, public keys from a JWKS.

fal calls back once per request, when it is done: `{"request_id",
"gateway_request_id", "status": "OK" | "ERROR", "payload", "error"}`, retried 10
times over 2 hours. `request_id` is the queue's id for the request (the
external id and, as fal sends one completion per request, the delivery id);
`gateway_request_id` names the last attempt and is not used. fal signs every
account's webhooks with the same keys: with `FAL_USER_ID` set, a delivery must
also name that user in `X-Fal-Webhook-User-Id`. An `ERROR`'s `error` is terse
("Invalid status code: 422"); what went wrong is in `payload.detail`, which the
job's error message keeps.

Queue API (`FAL_BASE_URL`, default https://queue.fal.run):
`POST {base}/{model}?fal_webhook=<url>` starts a request; its status is at
`{base}/{app}/requests/{id}/status` and its result at `{base}/{app}/requests/{id}`,
where `app` is the model id without its subpath (`fal-ai/flux` for
`fal-ai/flux/dev`). The request id alone does not say which app, so submit
records it (providers.poll_targets), taken from the `status_url` fal answers;
a request started elsewhere is registered with its `app_id` (`POST /jobs`).
The result request of a request that failed answers with the request's error
(`error_type`, or a model's typed `detail` list): that ends the job with it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import requests

from webhook_ingest import strict_json
from webhook_ingest.config import ConfigError
from webhook_ingest.providers import http
from webhook_ingest.providers.base import (
    JobRef,
    JobRequest,
    PayloadError,
    Provider,
    WebhookConfig,
    env_name,
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
from webhook_ingest.verification.ed25519_jwks import (
    DEFAULT_REFETCH_SECONDS,
    DEFAULT_TTL_SECONDS,
    Ed25519JwksVerifier,
    JwksCache,
    check_jwks_url,
    seconds_setting,
)

log = logging.getLogger(__name__)

_ERROR_TEXT_LIMIT = 500

# The value to give WEBHOOK_JWKS_URL_FAL in production (fal's published key set).
FAL_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"

# owner/name[/subpath...]: path segments only, so a model cannot redirect the request
# (\Z, not `$`, which also matches before a trailing newline).
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)+\Z")


# An ERROR's detail is the model's validation report, usually short; bounded so a
# huge one cannot bloat the job's state and every broadcast of it.
MAX_DETAIL_CHARS = 2000


def _error_text(answer: dict[str, Any]) -> str:
    error = answer.get("error")
    return str(error) if error else "fal request failed"


def _result_failure(exc: http.ProviderError) -> tuple[str, str] | None:
    """(fal's error type, the job's error message) when an error answer to a result
    request is the request's own failure: a request error (`{"detail": text,
    "error_type": ...}`, the type also in `X-Fal-Error-Type`) or a model error (a
    `detail` list of `{"loc", "msg", "type"}`). None for any other error answer."""
    answer = exc.answer or {}
    detail = answer.get("detail")
    error_type = answer.get("error_type") or exc.headers.get("X-Fal-Error-Type")
    if isinstance(error_type, str) and error_type:
        said = detail if isinstance(detail, str) and detail else f"HTTP {exc.status}"
        return error_type, f"fal request failed ({error_type}): {said}"[:_ERROR_TEXT_LIMIT]
    errors = [e for e in detail if isinstance(e, dict)] if isinstance(detail, list) else []
    if not errors:
        return None
    kind = errors[0].get("type")
    kind = kind if isinstance(kind, str) and kind else f"HTTP {exc.status}"
    said = "; ".join(str(e.get("msg")) for e in errors if e.get("msg"))
    return kind, f"fal model error ({kind}): {said or 'no message'}"[:_ERROR_TEXT_LIMIT]


def _webhook_error_text(payload: dict[str, Any]) -> str:
    """An ERROR webhook's message: `error` says little ("Invalid status code: 422");
    what went wrong is in `payload.detail` (a text or a validation report), kept."""
    text = _error_text(payload)
    body = payload.get("payload")
    detail = body.get("detail") if isinstance(body, dict) else None
    if detail in (None, "", [], {}):
        return text
    shown = detail if isinstance(detail, str) else strict_json.dumps(detail)
    if len(shown) > MAX_DETAIL_CHARS:
        shown = shown[:MAX_DETAIL_CHARS] + "…"
    return f"{text}: {shown}"


def app_id(model: str, answer: dict[str, Any], base_url: str, request_id: str) -> str:
    """The app a request's status and result live under.

    fal's own `status_url` says it; if it is missing or points elsewhere (never
    send our key to another host), the first two segments of the model id do.
    """
    status_url = answer.get("status_url")
    prefix, suffix = f"{base_url}/", f"/requests/{request_id}/status"
    if isinstance(status_url, str) and status_url.startswith(prefix):
        if status_url.endswith(suffix):
            app = status_url[len(prefix) : -len(suffix)]
            if _MODEL.match(app):
                return app
    return "/".join(model.split("/")[:2])


class FalProvider(Provider):
    name = "fal"
    configuration_hint = "WEBHOOK_JWKS_URL_FAL"
    default_base_url = "https://queue.fal.run"
    api_key_variable = "FAL_API_KEY (or FAL_KEY)"
    poll_target_field = "app_id"

    def checked_poll_target(self, value: str) -> str:
        """An app (`fal-ai/flux`) or a model id (`fal-ai/flux/dev`), stored as the app:
        a request's status lives under the model id's first two segments."""
        if not _MODEL.match(value) or len(value) > 256:
            raise ValueError("expected a fal app id such as fal-ai/flux")
        return "/".join(value.split("/")[:2])

    # The webhook carries the result: CDN URLs mostly, but a model asked for
    # `sync_mode` answers data URIs, several MB of base64 per image.
    default_max_body_bytes = 20 * 1024 * 1024
    # fal retries a delivery 10 times over 2 hours; an hour more for a retry that
    # lands late or a first attempt that was late itself.
    delivery_retry_window_seconds = 3 * 3600

    # -- the provider's API -----------------------------------------------------

    @property
    def api_key(self) -> str | None:
        # FAL_KEY is the name fal's own clients read.
        return self.setting("_API_KEY") or self.environ.get("FAL_KEY", "").strip() or None

    @property
    def session(self) -> requests.Session:
        """fal's scheme is `Authorization: Key <key>`, not Bearer."""
        if self._session is None:
            key = self.api_key
            self._session = http.make_session(f"Key {key}" if key else None, self.name)
        return self._session

    # -- receiving --------------------------------------------------------------

    def signature_verifier(self) -> Ed25519JwksVerifier | None:
        """Ed25519 with fal's published keys; None (accept nothing) without a JWKS URL."""
        if self.environ.get(env_name(self.name, prefix="WEBHOOK_SECRET_"), "").strip():
            raise ConfigError(
                "WEBHOOK_SECRET_FAL: fal signs with Ed25519 keys, not a shared secret; "
                f"set WEBHOOK_JWKS_URL_FAL={FAL_JWKS_URL} instead"
            )
        variable = env_name(self.name, prefix="WEBHOOK_JWKS_URL_")
        url = self.environ.get(variable, "").strip()
        if not url:
            return None
        keys = JwksCache(
            check_jwks_url(url, variable),
            self._redis,  # the process's client; without one, each process fetches for itself
            self.name,
            ttl_seconds=seconds_setting(
                self.environ, "WEBHOOK_JWKS_CACHE_SECONDS", DEFAULT_TTL_SECONDS, 60
            ),
            refetch_seconds=seconds_setting(
                self.environ, "WEBHOOK_JWKS_REFETCH_SECONDS", DEFAULT_REFETCH_SECONDS, 1
            ),
        )
        user_id = self.environ.get("FAL_USER_ID", "").strip() or None
        return Ed25519JwksVerifier(keys, self.settings.tolerance_seconds, user_id=user_id)

    def external_id(self, payload: dict[str, Any]) -> str:
        return require_str(payload, "request_id")

    def to_update(self, payload: dict[str, Any], job: JobRef) -> JobStateUpdate:
        request_id = self.external_id(payload)
        status = payload.get("status")
        if status == "ERROR":
            state, observed = FAILED, {"error_message": _webhook_error_text(payload)}
        elif status != "OK":
            raise PayloadError(f"unknown fal webhook status {status!r:.40}")
        elif payload.get("payload") is None and payload.get("payload_error"):
            # fal could not put the result into the webhook; the queue still has it.
            at = JobRef(job.job_id, job.provider, request_id)
            state, observed = COMPLETED, {"result": self._result_or_none(at)}
        else:
            state, observed = COMPLETED, {"result": payload.get("payload")}
        return self.update(
            job,
            state,
            source=SOURCE_WEBHOOK,
            provider_status=status,
            external_job_id=request_id,
            **observed,
        )

    def _result_or_none(self, job: JobRef) -> Any:
        try:
            return self._get(self._request_url(job))
        except (http.ProviderNotFound, LookupError):
            log.warning("fal result not retrievable; completed without it")
            return None

    # -- connector --------------------------------------------------------------

    def get_webhook_config(self, job_id: str) -> WebhookConfig:
        # fal has no event filter: one call when the request is done.
        return WebhookConfig(url=self.webhook_url(job_id), events=(), auth="ed25519-jwks")

    def submit(self, job: JobRequest) -> str:
        """`params`: `model` (e.g. `fal-ai/flux/dev`) and `input` (the model's arguments)."""
        params = dict(job.params)
        model = params.pop("model", None)
        arguments = params.pop("input", {})
        if not isinstance(model, str) or not _MODEL.match(model):
            raise ValueError("a fal job needs 'model', an id such as fal-ai/flux/dev")
        if not isinstance(arguments, dict):
            raise ValueError("a fal job's 'input' is an object of the model's arguments")
        if params:
            raise ValueError(f"unknown fal job parameters: {', '.join(sorted(params))}")
        targets = PollTargets(self.redis)  # before the POST: no Redis, no job started
        answer = http.post_json(
            self.session,
            f"{self.base_url}/{model}",
            params={"fal_webhook": self.get_webhook_config(job.job_id).url},
            json=arguments,
        )
        request_id = require_str(answer, "request_id")
        targets.remember(self.name, request_id, app_id(model, answer, self.base_url, request_id))
        return request_id

    def poll_job_status(self, job: JobRef) -> JobStateUpdate:
        try:
            url = self._request_url(job)
        except LookupError as exc:
            raise http.ProviderError(str(exc)) from None
        status = self._get(f"{url}/status")
        raw = status.get("status")
        if raw == "IN_QUEUE":
            state, observed = PROCESSING, {"progress": 0}
        elif raw == "IN_PROGRESS":
            state, observed = PROCESSING, {}
        elif raw != "COMPLETED":
            raise PayloadError(f"unknown fal queue status {raw!r:.40}")
        elif status.get("error"):
            state, observed = FAILED, {"error_message": _error_text(status)}
        else:
            state, observed = self._completed(url)
        observed.setdefault("provider_status", raw)
        return self.update(job, state, source=SOURCE_ORPHAN_POLL, **observed)

    def _completed(self, url: str) -> tuple[str, dict[str, Any]]:
        """A completed request's result, or its failure when the result request answers
        with the request's own error: fal keeps that answer, so asking again only
        repeats it."""
        try:
            return COMPLETED, {"result": self._get(url)}
        except http.ProviderNotFound:
            raise  # expired or unknown: the poller's grace period decides
        except http.ProviderError as exc:
            failure = _result_failure(exc)
            if failure is None:
                raise  # the queue API's own trouble (a gateway 502, our key): asked again
            error_type, text = failure
            return FAILED, {"provider_status": error_type, "error_message": text}

    def _request_url(self, job: JobRef) -> str:
        """Raises LookupError when neither submit nor the registration recorded the
        request's app (or what is recorded could not be an app)."""
        request_id = job.external_job_id or ""
        app = PollTargets(self.redis).for_job(self.name, job.job_id, request_id, "app_id")
        if not app:
            raise LookupError(
                f"no fal app recorded for request {request_id}: submit records it, "
                "POST /jobs takes it as app_id"
            )
        if not _MODEL.match(app):
            raise LookupError(f"the fal app recorded for request {request_id} is not owner/name")
        return f"{self.base_url}/{app}/requests/{http.path_segment(request_id)}"

    def _get(self, url: str) -> dict[str, Any]:
        _, body = http.get_json(self.session, url)
        return body

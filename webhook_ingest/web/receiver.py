"""POST /webhook/<provider>[/<job_id>]: prove the delivery authentic, make it durable, answer.

In that order, and nothing more: no provider I/O and no normalization here (the
worker does that, with retries). 2xx only once the broker holds the delivery.
"""

from __future__ import annotations

import logging
import re
import time

import redis
from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge, RequestTimeout

from webhook_ingest import strict_json
from webhook_ingest.handoff.claims import Claim, RateLimited
from webhook_ingest.handoff.delivery import Delivery, kept_headers
from webhook_ingest.handoff.publish import EnqueueFailed
from webhook_ingest.observability.metrics import (
    DELIVERIES_RECEIVED,
    ENQUEUE_SECONDS,
    VERIFICATION_FAILURES,
)
from webhook_ingest.state.replica_acks import ReplicasBehind
from webhook_ingest.verification import (
    VerificationError,
    VerificationUnavailable,
    Verified,
    body_digest,
)
from webhook_ingest.web.http_errors import error

log = logging.getLogger(__name__)

blueprint = Blueprint("receiver", __name__)

# Matched with fullmatch: `$` would also match before a trailing newline.
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@blueprint.post("/webhook/<provider>")
@blueprint.post("/webhook/<provider>/<job_id>")
@blueprint.post("/webhook/<provider>/<job_id>/<token>")
def receive(provider: str, job_id: str | None = None, token: str | None = None):
    """`token`: the secret URL segment of providers that sign nothing (RunPod)."""
    services = current_app.extensions["webhook_ingest"]
    handler = services.providers.get(provider)
    # URL text is not a label: an unknown name would make a new series per request.
    label = provider if handler is not None else "unknown"
    logged = {"job_id": _shown(job_id) if _segment_is_a_job_id(handler, token) else None}
    # Until the signature is verified, every refusal is charged to the client's
    # unverified budget (web.rate_limit); none of it touches Redis.
    if handler is None:
        return _unverified(label, "unknown_provider", 404, "unknown provider", **logged)
    if handler.verifier is None:
        return _unverified(label, "not_configured", 404, "provider not configured", **logged)
    if token is not None and not handler.takes_url_token:
        # a token segment exists only on the URLs of providers configured for one
        return _unverified(label, "not_found", 404, "not found", **logged)
    if not handler.allows(request.remote_addr):
        return _unverified(label, "address_not_allowed", 403, "address not allowed", **logged)
    if job_id is not None and not JOB_ID.fullmatch(job_id):
        return _unverified(label, "invalid_job_id", 400, "invalid job id", **logged)

    verified = None
    if handler.proof_covers_no_body:
        # A URL token (RunPod), bearer or basic credentials say nothing about the
        # body: checked before it is read, so a stranger cannot first make the
        # receiver read up to the provider's limit (20 MiB on RunPod's URLs).
        verified = _verify(handler, b"", token, job_id, label, logged)
        if not isinstance(verified, Verified):
            return verified  # the refusal
    try:
        body = read_body(handler.max_body_bytes)  # MAX_BODY_BYTES_<PROVIDER>
    except RequestEntityTooLarge:
        return _unverified(label, "too_large", 413, "body too large", **logged)
    except RequestTimeout:  # the body's deadline (webhook_ingest.web.body_deadline)
        return _unverified(
            label, "body_timeout", 408, "request body did not arrive in time", **logged
        )
    except BadRequest:
        return _unverified(label, "malformed_body", 400, "malformed request body", **logged)
    if verified is None:
        verified = _verify(handler, body, token, job_id, label, logged)
        if not isinstance(verified, Verified):
            return verified  # the refusal
    # Schemes without a delivery id (tokens): the same body is the same delivery.
    delivery_id = verified.delivery_id or body_digest(body)
    ids = {"job_id": job_id, "delivery_id": delivery_id}

    try:
        text = _object_text(body)
    except strict_json.NotStrictJSON as exc:
        # Python would take it, the worker could not store or broadcast it: refused
        # here rather than parked as an error later. The message names the rule only.
        return _refused(label, "invalid_json", 400, f"body is not JSON: {exc}", **ids)
    except _NotAnObject:
        return _refused(label, "invalid_json", 400, "body is not a JSON object", **ids)
    except ValueError:
        return _refused(label, "invalid_json", 400, "body is not JSON", **ids)
    # The text travels on; the bytes would be one more copy of a body of up to
    # MAX_BODY_BYTES_<PROVIDER> (20 MiB for RunPod) for the rest of the request.
    del body

    delivery = Delivery(
        provider=provider,
        delivery_id=delivery_id,
        body=text,
        job_id=job_id,
        headers=kept_headers(request.headers),
    )
    started = time.perf_counter()
    try:
        claim = current_app.extensions["handoff"].accept(delivery, request.remote_addr or "")
    except RateLimited as limited:  # RATE_LIMIT: nothing claimed, the provider retries
        return _refused(
            label,
            "rate_limited",
            429,
            "too many requests",
            Retry_After=str(limited.retry_after),
            **ids,
        )
    except EnqueueFailed:
        return _refused(
            label,
            "queue_unavailable",
            503,
            "queue unavailable, retry later",
            Retry_After="5",
            **ids,
        )
    except ReplicasBehind:
        # REDIS_MIN_REPLICA_ACKS: the claim and journal record are on the master but
        # not yet on enough replicas. The provider's retry finds the claim and is
        # answered as a duplicate, 2xx only once replicas hold it (replica_acks);
        # a failover that lost it meanwhile lets the retry claim it anew.
        return _refused(
            label,
            "replicas_behind",
            503,
            "state store replicas behind, retry later",
            Retry_After="5",
            **ids,
        )
    except redis.RedisError:
        _count(label, "state_unavailable", **ids)
        raise  # the app's handler answers 503
    if claim is Claim.DUPLICATE:
        _count(label, "duplicate", **ids)
        return jsonify(received=True, duplicate=True), 200
    if claim is Claim.IN_FLIGHT:
        return _refused(
            label,
            "in_flight",
            409,
            "this delivery is being received; retry later",
            Retry_After="1",
            **ids,
        )
    ENQUEUE_SECONDS.labels(label).observe(time.perf_counter() - started)
    services.raw_deliveries.keep(delivery)  # off by default; never raises
    _count(label, "accepted", **ids)
    return jsonify(received=True), 202


def _verify(handler, body: bytes, token: str | None, job_id: str | None, label: str, logged: dict):
    """The delivery's proof, or the answer refusing it."""
    try:
        # the job id of the same URL: a per-job URL token must be that job's
        return handler.verifier.verify(body, request.headers, url_token=token, job_id=job_id)
    except VerificationError as exc:
        VERIFICATION_FAILURES.labels(label, exc.reason).inc()
        return _unverified(
            label,
            "verification_failed",
            401,
            f"verification failed: {exc.reason}",
            exc.reason,
            **logged,
        )
    except VerificationUnavailable:
        return _refused(
            label,
            "verification_unavailable",
            503,
            "cannot verify deliveries right now, retry later",
            Retry_After="30",
            **logged,
        )


def _segment_is_a_job_id(handler, token: str | None) -> bool:
    """Whether the URL's second segment may be logged as the job id.

    On the URLs of a provider that takes a secret token (RunPod), a request
    without the token segment (`/webhook/runpod/<token>`, the job id forgotten)
    has the token where the job id belongs; an unknown or unconfigured provider
    cannot say what its segments are. Either way the segment may be a secret.
    """
    if token is not None:
        return True
    return handler is not None and handler.verifier is not None and not handler.takes_url_token


# Enough of a rejected id to recognise it; the URL may carry kilobytes of it.
MAX_LOGGED_REJECTED_ID = 64


def _shown(job_id: str | None) -> str | None:
    """The job id as logged: whole when it is one, else its start, marked as cut."""
    if job_id is None or JOB_ID.fullmatch(job_id) or len(job_id) <= MAX_LOGGED_REJECTED_ID:
        return job_id
    return job_id[:MAX_LOGGED_REJECTED_ID] + "…"


def _count(provider: str, outcome: str, reason: str | None = None, **ids: str | None) -> None:
    """One metric sample and one log line per answered delivery."""
    DELIVERIES_RECEIVED.labels(provider, outcome).inc()
    fields = {"provider": provider, "outcome": outcome, **ids}
    if reason:
        fields["reason"] = reason
    if outcome == "accepted":
        log.info("delivery accepted", extra=fields)
    elif outcome == "duplicate":
        log.info("delivery duplicate", extra=fields)
    else:
        log.info("delivery rejected: %s", reason or outcome, extra=fields)


def _refused(
    provider: str,
    outcome: str,
    status: int,
    message: str,
    reason: str | None = None,
    *,
    job_id: str | None = None,
    delivery_id: str | None = None,
    **headers: str,
):
    _count(provider, outcome, reason, job_id=job_id, delivery_id=delivery_id)
    return error(status, message, **headers)


def _unverified(
    provider: str,
    outcome: str,
    status: int,
    message: str,
    reason: str | None = None,
    *,
    job_id: str | None = None,
):
    """A refusal of a request that proved nothing, charged to its client's
    UNVERIFIED_RATE_LIMIT budget: over it, a 429 counted but not logged one by one."""
    limit = current_app.extensions["unverified_limit"]
    client = request.remote_addr or ""
    wait = limit.charge(client)
    if not wait:
        return _refused(provider, outcome, status, message, reason, job_id=job_id)
    DELIVERIES_RECEIVED.labels(provider, "unverified_rate_limited").inc()
    limit.fold(provider, client)
    return error(429, "too many unverified requests", Retry_After=str(wait))


class _NotAnObject(ValueError):
    pass


def _object_text(body: bytes) -> str:
    """The body as text, once it is known to be a strict JSON object. The parsed
    document is dropped at once (the worker parses the text again): held for the
    rest of the request it would be another copy of the body."""
    text = body.decode("utf-8")
    if not isinstance(strict_json.loads(text), dict):
        raise _NotAnObject
    return text


def read_body(limit: int) -> bytes:
    """The raw body, or 413 when it is larger than `limit`, with or without Content-Length."""
    # One byte over the limit: Werkzeug answers 413 from Content-Length itself, but
    # truncates a chunked body silently at the limit; reading one byte more tells
    # "exactly the limit" from "too large". Per request, so each provider has its own.
    request.max_content_length = limit + 1
    try:
        body = request.get_data(cache=False)  # stops after limit + 1 bytes
    except HTTPException:
        raise
    except Exception:  # the server's parser refused the framing (e.g. a bad chunk size)
        raise BadRequest("malformed request body") from None
    if len(body) > limit:
        raise RequestEntityTooLarge()
    return body

"""POST /webhook/<provider>[/<job_id>]: prove the delivery authentic, make it durable, answer.

In that order, and nothing more: no provider I/O and no normalization here (the
worker does that, with retries). 2xx only once the broker holds the delivery.
"""

from __future__ import annotations

import logging
import re

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge

from webhook_ingest import strict_json
from webhook_ingest.delivery import Delivery, kept_headers
from webhook_ingest.delivery_claims import Claim
from webhook_ingest.enqueue import EnqueueFailed, enqueue
from webhook_ingest.http_errors import error
from webhook_ingest.verification import VerificationError, VerificationUnavailable, body_digest

log = logging.getLogger(__name__)

blueprint = Blueprint("receiver", __name__)

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


@blueprint.post("/webhook/<provider>")
@blueprint.post("/webhook/<provider>/<job_id>")
@blueprint.post("/webhook/<provider>/<job_id>/<token>")
def receive(provider: str, job_id: str | None = None, token: str | None = None):
    """`token`: the secret URL segment of providers that sign nothing (RunPod)."""
    services = current_app.extensions["webhook_ingest"]
    handler = services.providers.get(provider)
    if handler is None:
        return error(404, "unknown provider")
    if handler.verifier is None:
        return error(404, "provider not configured")
    if token is not None and not handler.takes_url_token:
        # a token segment exists only on the URLs of providers configured for one
        return error(404, "not found")
    if not handler.allows(request.remote_addr):
        log.info("delivery rejected: address not allowed", extra={"provider": provider})
        return error(403, "address not allowed")
    if job_id is not None and not JOB_ID.match(job_id):
        return error(400, "invalid job id")

    body = read_body(services.settings.max_body_bytes)
    try:
        verified = handler.verifier.verify(body, request.headers, url_token=token)
    except VerificationError as exc:
        log.info("delivery rejected: %s", exc.reason, extra={"provider": provider})
        return error(401, f"verification failed: {exc.reason}")
    except VerificationUnavailable:
        log.warning("delivery not verifiable now", extra={"provider": provider})
        return error(503, "cannot verify deliveries right now, retry later", Retry_After="30")
    # Schemes without a delivery id (tokens): the same body is the same delivery.
    delivery_id = verified.delivery_id or body_digest(body)

    try:
        text = body.decode("utf-8")
        payload = strict_json.loads(text)
    except ValueError:
        return error(400, "body is not JSON")
    if not isinstance(payload, dict):
        return error(400, "body is not a JSON object")

    claims = services.claims
    claim = claims.claim(provider, delivery_id)
    if claim is Claim.DUPLICATE:
        return jsonify(received=True, duplicate=True), 200
    if claim is Claim.IN_FLIGHT:
        return error(409, "this delivery is being received; retry later", Retry_After="1")

    delivery = Delivery(
        provider=provider,
        delivery_id=delivery_id,
        body=text,
        job_id=job_id,
        headers=kept_headers(request.headers),
    )
    try:
        enqueue(current_app.extensions["celery"], delivery)
    except EnqueueFailed:
        _release(claims, provider, delivery_id)
        return error(503, "queue unavailable, retry later", Retry_After="5")
    try:
        claims.confirm(provider, delivery_id)
    except Exception:  # enqueued is what matters; the pending claim expires by itself
        log.warning("could not confirm delivery claim", extra={"provider": provider})
    services.raw_deliveries.keep(delivery)  # off by default; never raises
    return jsonify(received=True), 202


def read_body(limit: int) -> bytes:
    """The raw body, or 413 when it is larger than `limit`, with or without Content-Length."""
    try:
        body = request.get_data(cache=False)  # stops after limit + 1 bytes (see create_app)
    except HTTPException:
        raise
    except Exception:  # the server's parser refused the framing (e.g. a bad chunk size)
        raise BadRequest("malformed request body") from None
    if len(body) > limit:
        raise RequestEntityTooLarge()
    return body


def _release(claims, provider: str, delivery_id: str) -> None:
    try:
        claims.release(provider, delivery_id)
    except Exception:  # Redis down too: the pending claim expires within seconds
        log.warning("could not release delivery claim", extra={"provider": provider})

"""The `ADMIN_TOKEN` bearer that guards every operator endpoint but health and readiness.

Wrong or missing tokens are charged to the client address's ADMIN_FAILURE_LIMIT
budget (web.client_buckets, in the process's memory). A client that has spent it
gets 429 with `Retry-After` *before* its token is looked at, so guessing gets
no answer at all, right or wrong, until the budget refills. The price: an
operator behind the same address as a guesser waits too.
"""

from __future__ import annotations

import hmac
import logging

from flask import current_app, request

from webhook_ingest.web.http_errors import error

log = logging.getLogger(__name__)


def refusal() -> str | None:
    """None when the request carries the operator token, else why not, for the log
    (the answer says the same 401 whatever the reason): `disabled` (no ADMIN_TOKEN
    configured: the endpoints are disabled, not open), `missing` (no bearer token
    sent) or `wrong` (a bearer token that is not ADMIN_TOKEN)."""
    token = current_app.extensions["webhook_ingest"].settings.admin_token
    given = request.headers.get("Authorization", "")
    if not token:
        return "disabled"
    if not given.startswith("Bearer "):
        return "missing"
    if hmac.compare_digest(given[len("Bearer ") :].encode(), token.encode()):
        return None
    return "wrong"


_SAID = {
    "disabled": "no ADMIN_TOKEN is configured",
    "missing": "no bearer token sent",
    "wrong": "wrong bearer token",
}


def authorized() -> bool:
    return refusal() is None


def require_admin():
    """A `before_request` hook: None when authorized, else the 401 or 429 to answer."""
    failures = current_app.extensions["admin_failures"]
    client = request.remote_addr or ""
    wait = failures.wait(client)
    if wait:
        return error(429, "too many failed operator requests", Retry_After=str(wait))
    why = refusal()
    if why is None:
        return None
    failures.spend(client)
    # Told apart here only: an operator's typo (wrong) from a client that sends no
    # token at all (missing), and a deployment without ADMIN_TOKEN (disabled).
    log.info(
        "operator request refused: %s",
        _SAID[why],
        extra={"outcome": "unauthorized", "reason": f"{why}_token"},
    )
    return error(401, "operator token required", WWW_Authenticate="Bearer")

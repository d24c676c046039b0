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


def authorized() -> bool:
    token = current_app.extensions["webhook_ingest"].settings.admin_token
    given = request.headers.get("Authorization", "")
    # No token configured: the endpoints are disabled, not open.
    if not token or not given.startswith("Bearer "):
        return False
    return hmac.compare_digest(given[len("Bearer ") :].encode(), token.encode())


def require_admin():
    """A `before_request` hook: None when authorized, else the 401 or 429 to answer."""
    failures = current_app.extensions["admin_failures"]
    client = request.remote_addr or ""
    wait = failures.wait(client)
    if wait:
        return error(429, "too many failed operator requests", Retry_After=str(wait))
    if authorized():
        return None
    failures.spend(client)
    log.info("operator request refused: bad or missing token", extra={"outcome": "unauthorized"})
    return error(401, "operator token required", WWW_Authenticate="Bearer")

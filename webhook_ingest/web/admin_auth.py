"""The `ADMIN_TOKEN` bearer that guards every operator endpoint but health and readiness."""

from __future__ import annotations

import hmac

from flask import current_app, request

from webhook_ingest.web.http_errors import error


def authorized() -> bool:
    token = current_app.extensions["webhook_ingest"].settings.admin_token
    given = request.headers.get("Authorization", "")
    # No token configured: the endpoints are disabled, not open.
    if not token or not given.startswith("Bearer "):
        return False
    return hmac.compare_digest(given[len("Bearer ") :].encode(), token.encode())


def require_admin():
    """A `before_request` hook: None when authorized, else the 401 to answer."""
    if not authorized():
        return error(401, "operator token required", WWW_Authenticate="Bearer")
    return None

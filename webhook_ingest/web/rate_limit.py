"""Per provider + client address rate limiting (Flask-Limiter on Redis).

Over the limit: 429 with Retry-After; providers retry, so nothing is lost. If
the limiter's Redis is unreachable, limits fall back to each process's memory
(Flask-Limiter's in-memory fallback) instead of refusing deliveries: a delivery
that gets past the limiter still needs Redis for its claim and the broker for
its enqueue, and answers 503 if they are down, so nothing is acknowledged that
was not kept.
"""

from __future__ import annotations

import logging
import math
import time

from flask import Blueprint, Flask, Response, current_app, request
from flask_limiter import Limiter, RequestLimit

from webhook_ingest.config import Settings
from webhook_ingest.observability.metrics import DELIVERIES_RECEIVED
from webhook_ingest.web.http_errors import error

log = logging.getLogger(__name__)


def _provider_and_client() -> str:
    provider = (request.view_args or {}).get("provider", "")
    return f"{provider}:{request.remote_addr}"


def _refuse(limit: RequestLimit) -> Response:
    """The 429, counted like every other answer, with the Retry-After providers honour."""
    provider = (request.view_args or {}).get("provider", "")
    if provider not in current_app.extensions["webhook_ingest"].providers:
        provider = "unknown"
    DELIVERIES_RECEIVED.labels(provider, "rate_limited").inc()
    log.info("delivery rejected: rate limited", extra={"provider": provider})
    try:
        wait = max(1, math.ceil(limit.window[0] - time.time()))  # window[0]: when it resets
    except Exception:  # the limiter's store went away between the hit and now
        wait = 1
    return error(429, "too many requests", Retry_After=str(wait))


def init_rate_limit(app: Flask, settings: Settings, blueprint: Blueprint) -> Limiter:
    limiter = Limiter(
        key_func=_provider_and_client,
        app=app,
        storage_uri=settings.redis_url,
        storage_options={"socket_connect_timeout": 0.5, "socket_timeout": 1},
        # one INCR+EXPIRE per request: the cheapest exact strategy on the hot path
        strategy="fixed-window",
        # X-RateLimit-* on every answer would cost a second Redis round trip per
        # delivery (bench/); only a refusal carries Retry-After (_refuse).
        headers_enabled=False,
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        default_limits=[],
        key_prefix="webhook_ingest:rate",
        on_breach=_refuse,
    )
    limiter.limit(settings.rate_limit)(blueprint)
    return limiter

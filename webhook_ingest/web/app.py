"""The Flask application factory for the receiver."""

from __future__ import annotations

import logging

from celery import Celery
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from webhook_ingest.handoff import Handoff, broker, build_handoff
from webhook_ingest.providers import configuration_warnings
from webhook_ingest.services import Services, build_services
from webhook_ingest.web import dead_letter_api, metrics_endpoint, operator_api, receiver
from webhook_ingest.web.client_buckets import ClientBuckets
from webhook_ingest.web.http_errors import register_error_handlers
from webhook_ingest.web.rate_limit import UnverifiedLimit

log = logging.getLogger(__name__)


def create_app(
    services: Services | None = None,
    celery_app: Celery | None = None,
    handoff: Handoff | None = None,
) -> Flask:
    """Every argument defaults to what the environment describes (tests pass others):
    the handoff to the one the configuration allows (webhook_ingest.handoff)."""
    services = services or build_services()
    settings = services.settings

    app = Flask(__name__)
    # Operator requests (POST /jobs, ...). A webhook's body is read under its
    # provider's limit instead (MAX_BODY_BYTES_<PROVIDER>, receiver.read_body), which
    # may be larger: RunPod's outputs come inline.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    if settings.trusted_proxy_count:
        # Only hops we were told about may set the client address.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxy_count)

    if celery_app is None:
        celery_app = broker.celery_app(settings)  # the receiver only publishes
    if handoff is None:
        handoff = build_handoff(
            settings, services.redis, services.claims, services.journal, celery_app
        )

    app.extensions["webhook_ingest"] = services
    app.extensions["celery"] = celery_app
    app.extensions["handoff"] = handoff
    # in this process's memory: traffic that proved nothing costs no Redis
    app.extensions["unverified_limit"] = UnverifiedLimit(settings.unverified_rate_limit)
    app.extensions["admin_failures"] = ClientBuckets(settings.admin_failure_limit)
    app.register_blueprint(receiver.blueprint)
    app.register_blueprint(operator_api.blueprint)
    app.register_blueprint(metrics_endpoint.blueprint)
    app.register_blueprint(dead_letter_api.blueprint)
    register_error_handlers(app)

    disabled = sorted(
        name for name, p in services.providers.items() if p.supports_webhooks() and not p.enabled
    )
    if disabled:
        log.warning("providers without verification configured (accept nothing): %s", disabled)
    for warning in configuration_warnings(services.providers):
        log.warning(warning)
    return app

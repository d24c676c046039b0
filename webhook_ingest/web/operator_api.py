"""Operator endpoints: health, readiness, and the job registry over HTTP."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify, request
from marshmallow import Schema, ValidationError, fields, validate

from webhook_ingest.operations import readiness
from webhook_ingest.state.job_registry import Registration
from webhook_ingest.state.job_view import job_view
from webhook_ingest.web.admin_auth import require_admin
from webhook_ingest.web.http_errors import error
from webhook_ingest.web.receiver import JOB_ID

log = logging.getLogger(__name__)

blueprint = Blueprint("operator", __name__)


@blueprint.get("/healthz")
def healthz():
    """The process answers. No dependency checks: a Redis outage must not restart us."""
    return jsonify(status="ok")


@blueprint.get("/readyz")
def readyz():
    """Ready to accept deliveries: Redis and the broker both answer."""
    problems = readiness.unavailable(
        current_app.extensions["webhook_ingest"], current_app.extensions["celery"]
    )
    if problems:
        return jsonify(status="unavailable", unavailable=problems), 503
    return jsonify(status="ready")


@blueprint.before_request
def _require_admin():
    if request.endpoint in ("operator.healthz", "operator.readyz"):
        return None
    return require_admin()


def _job_id(value: str) -> None:
    # fullmatch: marshmallow's Regexp uses match, whose `$` lets a trailing newline in
    if not JOB_ID.fullmatch(value):
        raise ValidationError("invalid job id")


class RegisterJobSchema(Schema):
    job_id = fields.String(required=True, validate=_job_id)
    provider = fields.String(required=True)
    external_job_id = fields.String(required=True, validate=validate.Length(min=1, max=256))


@blueprint.post("/jobs")
def register_job():
    services = current_app.extensions["webhook_ingest"]
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return error(400, "body must be a JSON object")
    try:
        job = RegisterJobSchema().load(body)
    except ValidationError as exc:
        field = sorted(exc.normalized_messages())[0]
        return jsonify(error=f"invalid field {field}", field=field), 400
    if job["provider"] not in services.providers:
        return jsonify(error="invalid field provider: unknown provider", field="provider"), 400
    outcome = services.jobs.register(job["job_id"], job["provider"], job["external_job_id"])
    if outcome is Registration.CONFLICT:
        return error(409, "job or external id already mapped differently")
    status = 201 if outcome is Registration.CREATED else 200
    # The URL to give the provider for this job (a secret when it carries a token):
    # submitters never build it by hand. None for a provider without webhooks.
    webhook_url = services.providers[job["provider"]].job_webhook_url(job["job_id"])
    return jsonify(
        registered=True,
        created=outcome is Registration.CREATED,
        webhook_url=webhook_url,
        **job,
    ), status


@blueprint.get("/jobs/<job_id>")
def show_job(job_id: str):
    """Mapping, state and the last few observations (newest first)."""
    view = job_view(current_app.extensions["webhook_ingest"], job_id)
    if view is None:
        return error(404, "unknown job")
    return jsonify(view)

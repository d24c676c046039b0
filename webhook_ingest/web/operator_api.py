"""Operator endpoints: health, readiness, and the job registry over HTTP."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify, request
from marshmallow import Schema, ValidationError, fields

from webhook_ingest.operations import readiness
from webhook_ingest.state.job_registry import Registration, external_id_problem
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
    services = current_app.extensions["webhook_ingest"]
    problems = readiness.unavailable(services, current_app.extensions["celery"])
    if problems:
        body = {"status": "unavailable", "unavailable": problems}
        switching = readiness.switching(services, problems)
        if switching:
            body["switching"] = switching
        return jsonify(body), 503, {"Retry-After": "5"}
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


def _external_id(value: str) -> None:
    problem = external_id_problem(value)
    if problem:
        raise ValidationError(problem)


class RegisterJobSchema(Schema):
    job_id = fields.String(required=True, validate=_job_id)
    provider = fields.String(required=True)
    external_job_id = fields.String(required=True, validate=_external_id)
    # Where a job started elsewhere is polled, for the providers whose id does not
    # say (Provider.poll_target_field): fal's app, RunPod's endpoint. Optional.
    app_id = fields.String(load_default=None)
    endpoint_id = fields.String(load_default=None)


POLL_TARGET_FIELDS = ("app_id", "endpoint_id")


@blueprint.post("/jobs")
def register_job():
    services = current_app.extensions["webhook_ingest"]
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return error(400, "body must be a JSON object")
    try:
        job = RegisterJobSchema().load(body)
    except ValidationError as exc:
        field, messages = sorted(exc.normalized_messages().items())[0]
        return _bad_field(field, messages[0] if field == "external_job_id" else None)
    provider = services.providers.get(job["provider"])
    if provider is None:
        return _bad_field("provider", "unknown provider")
    try:
        poll_target = _poll_target(provider, job)
    except _BadField as bad:
        return _bad_field(bad.field, bad.reason)
    outcome = services.jobs.register(
        job["job_id"], provider.name, job["external_job_id"], poll_target
    )
    if outcome is Registration.CONFLICT:
        return error(409, "job or external id already mapped differently")
    status = 201 if outcome is Registration.CREATED else 200
    # The URL to give the provider for this job (a secret when it carries a token):
    # submitters never build it by hand. None for a provider without webhooks.
    webhook_url = provider.job_webhook_url(job["job_id"])
    shown = {name: value for name, value in job.items() if value is not None}
    if poll_target:
        shown[poll_target[0]] = poll_target[1]  # as stored (fal: the app of a model id)
    return jsonify(
        registered=True,
        created=outcome is Registration.CREATED,
        webhook_url=webhook_url,
        **shown,
    ), status


class _BadField(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


def _poll_target(provider, job: dict) -> tuple[str, str] | None:
    """(mapping field, value) of the poll target given, checked by its provider."""
    given = [name for name in POLL_TARGET_FIELDS if job[name] is not None]
    for name in given:
        if name != provider.poll_target_field:
            raise _BadField(name, f"{provider.name} jobs do not take it")
    if not given:
        return None
    try:
        return given[0], provider.checked_poll_target(job[given[0]])
    except ValueError as exc:
        raise _BadField(given[0], str(exc)) from None


def _bad_field(field: str, reason: str | None = None):
    """400 naming the field; `reason` only where it says nothing the caller did not send."""
    message = f"invalid field {field}: {reason}" if reason else f"invalid field {field}"
    return jsonify(error=message, field=field), 400


@blueprint.get("/jobs/<job_id>")
def show_job(job_id: str):
    """Mapping, state and the last few observations (newest first)."""
    view = job_view(current_app.extensions["webhook_ingest"], job_id)
    if view is None:
        return error(404, "unknown job")
    return jsonify(view)

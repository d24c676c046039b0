"""GET /dead-letters[/<id>]: parked deliveries over HTTP, behind the ADMIN_TOKEN bearer.

Read only: replaying and purging are deliberate acts, done with the CLI.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from webhook_ingest.web.admin_auth import require_admin
from webhook_ingest.web.http_errors import error

blueprint = Blueprint("dead_letters", __name__)
blueprint.before_request(require_admin)

MAX_LIMIT = 500
# \Z, not `$`, which also matches before a trailing newline
LETTER_ID = re.compile(r"^[0-9a-f]{32}\Z")


# The reasons workers.tasks parks a delivery under: its own words, and the class
# name of the error for a payload, mapping or provider error it cannot retry.
FIXED_REASONS = ("unmatched", "provider_unavailable", "provider_auth", "error")


def known_reasons() -> list[str]:
    from webhook_ingest.providers import PayloadError
    from webhook_ingest.providers.http import ProviderError
    from webhook_ingest.state.job_registry import JobMismatch

    def names(cls: type) -> set[str]:
        return {cls.__name__}.union(*(names(sub) for sub in cls.__subclasses__()))

    parked_errors = (PayloadError, JobMismatch, ProviderError)
    return sorted({*FIXED_REASONS, *(name for cls in parked_errors for name in names(cls))})


def _known_reason(value: str) -> None:
    # A misspelt reason matched nothing and answered an empty list: "no letters".
    reasons = known_reasons()
    if value not in reasons:
        raise ValidationError(f"unknown reason; one of {', '.join(reasons)}")


class ListQuery(Schema):
    class Meta:
        unknown = RAISE  # a misspelt filter must not silently list everything

    limit = fields.Integer(
        load_default=50,
        validate=validate.Range(1, MAX_LIMIT, error=f"must be between 1 and {MAX_LIMIT}"),
        error_messages={"invalid": f"must be a whole number between 1 and {MAX_LIMIT}"},
    )
    provider = fields.String(load_default=None, validate=validate.Length(1, 64))
    reason = fields.String(load_default=None, validate=_known_reason)


@blueprint.get("/dead-letters")
def list_dead_letters():
    """Newest first, without the bodies (see one letter for its delivery)."""
    services = current_app.extensions["webhook_ingest"]
    try:
        query = ListQuery().load(request.args.to_dict())
    except ValidationError as exc:
        name, messages = sorted(exc.normalized_messages().items())[0]
        # what the caller may send instead (a range, the known reasons), never what it sent
        why = messages[0] if name in ("limit", "reason") else None
        return _bad_parameter(name, why)
    if query["provider"] is not None and query["provider"] not in services.providers:
        return _bad_parameter("provider", "unknown provider")
    letters = services.dead_letters.list(with_message=False, **query)
    return jsonify(dead_letters=[_public(letter) for letter in letters], count=len(letters))


@blueprint.get("/dead-letters/<letter_id>")
def show_dead_letter(letter_id: str):
    letter = None
    if LETTER_ID.match(letter_id):
        letter = current_app.extensions["webhook_ingest"].dead_letters.get(letter_id)
    if letter is None:
        return error(404, "unknown dead letter")
    return jsonify(_public(letter))


def _bad_parameter(name: str, why: str | None = None):
    message = f"invalid parameter {name}" + (f": {why}" if why else "")
    return jsonify(error=message, parameter=name), 400


def _public(letter: dict[str, Any]) -> dict[str, Any]:
    # The message holds only the headers delivery.kept_headers let through: no secrets.
    return {**letter, "job_id": letter["job_id"] or None}

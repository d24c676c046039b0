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


class ListQuery(Schema):
    class Meta:
        unknown = RAISE  # a misspelt filter must not silently list everything

    limit = fields.Integer(load_default=50, validate=validate.Range(1, MAX_LIMIT))
    provider = fields.String(load_default=None, validate=validate.Length(1, 64))
    reason = fields.String(load_default=None, validate=validate.Length(1, 64))


@blueprint.get("/dead-letters")
def list_dead_letters():
    """Newest first, without the bodies (see one letter for its delivery)."""
    services = current_app.extensions["webhook_ingest"]
    try:
        query = ListQuery().load(request.args.to_dict())
    except ValidationError as exc:
        return _bad_parameter(sorted(exc.normalized_messages())[0])
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

"""The normalized job-state update: what every provider payload and poll becomes.

Field names are the seed's `JobStateUpdate`, which the rest of the job system
already consumes from `job_progress:{job_id}` and `job_updates`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates

from webhook_ingest import strict_json
from webhook_ingest.clock import now_ms

PROCESSING = "processing"
COMPLETED = "completed"
FAILED = "failed"
STATUSES = (PROCESSING, COMPLETED, FAILED)
TERMINAL_STATUSES = frozenset({COMPLETED, FAILED})

SOURCE_WEBHOOK = "webhook"
SOURCE_ORPHAN_POLL = "orphan_poll"
SOURCES = (SOURCE_WEBHOOK, SOURCE_ORPHAN_POLL)


@dataclass(frozen=True)
class JobStateUpdate:
    """One provider observation of a job, already mapped to our vocabulary.

    `progress=None` means the provider said nothing about progress (keep what we
    have); `result=None` means no result in this observation. `provider_status` is
    the provider's own word for the status (`succeeded`, `IN_PROGRESS`, ...), kept
    for operators in the job's events only: neither the state nor the broadcast
    carries it.
    """

    job_id: str
    status: str
    provider: str
    source: str
    external_job_id: str | None = None
    progress: int | None = None
    result: Any = None
    error_message: str | None = None
    updated_at: int = field(default_factory=now_ms)
    provider_status: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JobStateUpdateSchema(Schema):
    """Validates an update before it may touch Redis (and documents its shape)."""

    job_id = fields.String(required=True, validate=validate.Length(min=1, max=200))
    external_job_id = fields.String(allow_none=True, load_default=None)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    progress = fields.Integer(allow_none=True, load_default=None, validate=validate.Range(0, 100))
    result = fields.Raw(allow_none=True, load_default=None)
    error_message = fields.String(allow_none=True, load_default=None)
    provider = fields.String(required=True, validate=validate.Length(min=1, max=64))
    updated_at = fields.Integer(load_default=now_ms)
    source = fields.String(required=True, validate=validate.OneOf(SOURCES))
    provider_status = fields.String(allow_none=True, load_default=None)

    @validates("result")
    def _result_is_json(self, value: Any, **_: object) -> None:
        try:
            strict_json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"result is not JSON: {exc}") from None


_schema = JobStateUpdateSchema()


def validated(update: JobStateUpdate) -> JobStateUpdate:
    """Round-trip through the schema so a normalizer bug cannot write bad state."""
    return JobStateUpdate(**_schema.load(update.to_dict()))


def result_json(result: Any) -> str | None:
    """`result` is stored and broadcast as JSON text (contract section 4)."""
    if result is None:
        return None
    return strict_json.dumps(result)

"""A verified delivery as it travels from the receiver to a worker.

The raw body travels as received (it was verified on these bytes and is kept for
dead letters and replay); only headers that identify the delivery are kept, never
the signature or credentials.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from webhook_ingest.clock import now_ms

KEPT_HEADERS = ("webhook-id", "webhook-timestamp", "content-type", "user-agent")


@dataclass(frozen=True)
class Delivery:
    provider: str
    delivery_id: str
    body: str
    job_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    received_at: int = field(default_factory=now_ms)
    # Set when an operator replays a dead letter (ms), so a worker can tell a replay
    # from a first delivery; received_at keeps the original arrival.
    replayed_at: int | None = None
    # Set by the receiver when the delivery was written to the journal with its
    # claim (handoff.journal): the worker then finishes that record with the
    # outcome, and takes a missing record to mean the delivery was finished by an
    # earlier copy. Deliveries sent by an older version carry no such record.
    journaled: bool = False

    @property
    def journal_member(self) -> str:
        """The delivery's name in the journal: the same identity as its claim
        (provider, the job of the URL it came to, delivery id; keys.delivery_claim)."""
        if self.job_id is None:
            return f"{self.provider}:{self.delivery_id}"
        return f"{self.provider}/{self.job_id}/{self.delivery_id}"

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Delivery:
        return cls(**{name: message[name] for name in cls.__dataclass_fields__ if name in message})


def kept_headers(headers) -> dict[str, str]:
    return {name: headers[name] for name in KEPT_HEADERS if name in headers}

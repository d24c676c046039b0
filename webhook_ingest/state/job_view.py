"""What an operator sees of one job, the same over HTTP (`GET /jobs/<id>`) and in
the CLI (`webhook-ingest jobs show <id>`)."""

from __future__ import annotations

import json
from typing import Any

from webhook_ingest.services import Services
from webhook_ingest.state import keys

EVENTS_SHOWN = 10


def job_view(services: Services, job_id: str) -> dict[str, Any] | None:
    """Mapping, state and the newest observations; None when Redis knows nothing of it."""
    # One transaction: the state and the events that led to it, from the same moment.
    with services.redis.pipeline(transaction=True) as pipe:
        pipe.hgetall(keys.job_mapping(job_id))
        pipe.hgetall(keys.job_state(job_id))
        pipe.lrange(keys.job_events(job_id), 0, EVENTS_SHOWN - 1)
        mapping, state, events = pipe.execute()
    if not mapping and not state and not events:
        return None
    return {
        "job_id": job_id,
        "mapping": mapping or None,
        "state": state or None,
        "events": [json.loads(event) for event in events],
    }

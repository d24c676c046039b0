"""Deliveries that were authentic but said nothing about a job we track (an event
type we do not follow, a job nobody registered that never will be): recorded in a
capped list for an operator to look at, not errors and not applied."""

from __future__ import annotations

import json

import redis

from webhook_ingest.state import keys

KEEP = 1000


class IgnoredDeliveries:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def record(
        self,
        provider: str,
        delivery_id: str,
        job_id: str | None,
        event_type: str | None,
        received_at: int,
    ) -> None:
        record = json.dumps(
            {
                "provider": provider,
                "delivery_id": delivery_id,
                "job_id": job_id,
                "event_type": event_type,
                "received_at": received_at,
            }
        )
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.lpush(keys.IGNORED_DELIVERIES, record)
            pipe.ltrim(keys.IGNORED_DELIVERIES, 0, KEEP - 1)
            pipe.execute()

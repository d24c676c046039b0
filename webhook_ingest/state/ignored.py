"""Deliveries that were authentic but said nothing about a job we track (an event
type we do not follow, a job nobody registered that never will be): recorded in a
capped list for an operator to look at, not errors and not applied."""

from __future__ import annotations

import json

import redis

from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.handoff.journal import finish_in
from webhook_ingest.state import keys

KEEP = 1000


class IgnoredDeliveries:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def record(self, delivery: Delivery, job_id: str | None, event_type: str | None) -> None:
        """Record the delivery and finish its journal record, together."""
        record = json.dumps(
            {
                "provider": delivery.provider,
                "delivery_id": delivery.delivery_id,
                "job_id": job_id,
                "event_type": event_type,
                "received_at": delivery.received_at,
            }
        )
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.lpush(keys.IGNORED_DELIVERIES, record)
            pipe.ltrim(keys.IGNORED_DELIVERIES, 0, KEEP - 1)
            finish_in(pipe, delivery)
            pipe.execute()

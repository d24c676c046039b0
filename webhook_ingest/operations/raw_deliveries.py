"""A short debug window of every verified delivery, as received (RAW_RETENTION_SECONDS).

Off by default, and then it costs nothing: no Redis call on the hot path. When on,
each delivery is one SET with the retention as its TTL plus an index entry, written
in one round trip after the delivery was enqueued. Only the headers that
delivery.kept_headers lets through are kept: never signatures or credentials.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from webhook_ingest.clock import now_ms
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.state import keys

log = logging.getLogger(__name__)

READ_CHUNK = 200


class RawDeliveries:
    def __init__(self, client: redis.Redis, retention_seconds: int) -> None:
        self._redis = client
        self._retention = retention_seconds

    @property
    def enabled(self) -> bool:
        return self._retention > 0

    def keep(self, delivery: Delivery) -> None:
        """Keep a copy for the retention window; never raises (it is only a debug aid)."""
        if not self.enabled:
            return
        record = {
            "provider": delivery.provider,
            "delivery_id": delivery.delivery_id,
            "job_id": delivery.job_id,
            "headers": delivery.headers,
            "body": delivery.body,
            "received_at": delivery.received_at,
        }
        member = _member(delivery.provider, delivery.delivery_id)
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(keys.raw_delivery(member), json.dumps(record), ex=self._retention)
                pipe.zadd(keys.RAW_DELIVERIES, {member: delivery.received_at})
                # The index is trimmed by the same age, so it never outgrows the records.
                cutoff = now_ms() - self._retention * 1000
                pipe.zremrangebyscore(keys.RAW_DELIVERIES, "-inf", f"({cutoff}")
                pipe.expire(keys.RAW_DELIVERIES, self._retention)
                pipe.execute()
        except Exception as exc:
            log.warning(
                "could not keep the raw delivery: %s",
                type(exc).__name__,
                extra={
                    "provider": delivery.provider,
                    "delivery_id": delivery.delivery_id,
                    "job_id": delivery.job_id,
                },
            )

    def get(self, provider: str, delivery_id: str) -> dict[str, Any] | None:
        raw = self._redis.get(keys.raw_delivery(_member(provider, delivery_id)))
        return json.loads(raw) if raw else None

    def list(self, provider: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The newest `limit` kept deliveries, of one provider or all."""
        found: list[dict[str, Any]] = []
        start = 0
        while len(found) < limit:
            members = self._redis.zrevrange(keys.RAW_DELIVERIES, start, start + READ_CHUNK - 1)
            if not members:
                break
            start += len(members)
            if provider is not None:
                members = [m for m in members if m.startswith(f"{provider}:")]
            if not members:
                continue
            records = self._redis.mget([keys.raw_delivery(m) for m in members])
            found.extend(json.loads(raw) for raw in records if raw)
        return found[:limit]


def _member(provider: str, delivery_id: str) -> str:
    # Provider names hold no colon, so the first one separates the two.
    return f"{provider}:{delivery_id}"

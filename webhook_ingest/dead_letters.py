"""Deliveries that could not be applied, kept where an operator can see them.

A dead letter holds the delivery as it arrived (safe headers and raw body, the
same message a worker received), the reason, the last error and the attempts,
for `DEAD_LETTER_TTL_SECONDS`. Replaying re-enqueues that message through the
normal path; the state function's per-job delivery ids keep a replay idempotent.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis

from webhook_ingest import keys
from webhook_ingest.delivery import Delivery
from webhook_ingest.job_update import now_ms


class DeadLetters:
    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self._redis = client
        self._ttl = ttl_seconds

    def park(self, delivery: Delivery, reason: str, error: str, attempts: int) -> str:
        letter_id = uuid.uuid4().hex
        parked_at = now_ms()
        record = {
            "id": letter_id,
            "reason": reason,
            "error": error[:2000],
            "attempts": attempts,
            "parked_at": parked_at,
            "provider": delivery.provider,
            "delivery_id": delivery.delivery_id,
            "job_id": delivery.job_id or "",
            "message": json.dumps(delivery.to_message()),
        }
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.dead_letter(letter_id), mapping=record)
            pipe.expire(keys.dead_letter(letter_id), self._ttl)
            pipe.zadd(keys.DEAD_LETTERS, {letter_id: parked_at})
            # the index forgets what the records forgot
            pipe.zremrangebyscore(keys.DEAD_LETTERS, "-inf", parked_at - self._ttl * 1000)
            pipe.execute()
        return letter_id

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        ids = self._redis.zrevrange(keys.DEAD_LETTERS, 0, max(0, limit - 1))
        letters = [self.get(letter_id) for letter_id in ids]
        return [letter for letter in letters if letter is not None]

    def get(self, letter_id: str) -> dict[str, Any] | None:
        record = self._redis.hgetall(keys.dead_letter(letter_id))
        if not record:
            return None
        record["attempts"] = int(record["attempts"])
        record["parked_at"] = int(record["parked_at"])
        record["message"] = json.loads(record["message"])
        return record

    def delivery(self, letter_id: str) -> Delivery | None:
        letter = self.get(letter_id)
        return Delivery.from_message(letter["message"]) if letter else None

    def remove(self, letter_id: str) -> bool:
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.dead_letter(letter_id))
            pipe.zrem(keys.DEAD_LETTERS, letter_id)
            deleted, _ = pipe.execute()
        return bool(deleted)

    def count(self) -> int:
        return self._redis.zcard(keys.DEAD_LETTERS)

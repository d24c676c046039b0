"""Receiver-side de-duplication by delivery id (`webhook-id`).

A claim is `pending` while the delivery is being enqueued and `enqueued` after.
A retry that arrives while the first attempt is still pending is told to come
back (409) rather than acknowledged: if that first enqueue then failed, an
acknowledged duplicate would have lost the delivery. A failed enqueue releases
the claim so the provider's retry is accepted.
"""

from __future__ import annotations

import enum

import redis

from webhook_ingest.state import keys

PENDING = "pending"
ENQUEUED = "enqueued"
# Longer than any enqueue can take (bounded publish retry); after that a stuck
# claim from a killed receiver frees itself.
PENDING_TTL_SECONDS = 30

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Claim(enum.StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"
    IN_FLIGHT = "in_flight"


class DeliveryClaims:
    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self._redis = client
        self._ttl = ttl_seconds
        self._release = client.register_script(_RELEASE_LUA)

    def claim(self, provider: str, delivery_id: str) -> Claim:
        previous = self._redis.set(
            keys.delivery_claim(provider, delivery_id),
            PENDING,
            nx=True,
            get=True,
            ex=PENDING_TTL_SECONDS,
        )
        if previous is None:
            return Claim.NEW
        return Claim.DUPLICATE if previous == ENQUEUED else Claim.IN_FLIGHT

    def confirm(self, provider: str, delivery_id: str) -> None:
        self._redis.set(keys.delivery_claim(provider, delivery_id), ENQUEUED, ex=self._ttl)

    def release(self, provider: str, delivery_id: str) -> None:
        self._release(keys=[keys.delivery_claim(provider, delivery_id)], args=[PENDING])

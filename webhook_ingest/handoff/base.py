"""What every way of making a delivery durable promises the receiver."""

from __future__ import annotations

import abc

from webhook_ingest.handoff.claims import Claim
from webhook_ingest.handoff.delivery import Delivery


class Handoff(abc.ABC):
    @abc.abstractmethod
    def accept(self, delivery: Delivery, client: str = "") -> Claim:
        """Claim.NEW only once the delivery is journaled (and, but for a crash, on
        the broker); DUPLICATE for a delivery id already journaled, IN_FLIGHT for
        one a receiver of an older version is still enqueueing. Raises
        RateLimited when `client` (the sender's address) is over RATE_LIMIT for
        the provider, EnqueueFailed (broker unreachable), ReplicasBehind (fewer
        than REDIS_MIN_REPLICA_ACKS replicas confirmed the write in time) or
        redis.RedisError (state store unreachable); whichever, the answer is no 2xx."""

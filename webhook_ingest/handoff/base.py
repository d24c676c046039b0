"""What every way of making a delivery durable promises the receiver."""

from __future__ import annotations

import abc

from webhook_ingest.handoff.claims import Claim
from webhook_ingest.handoff.delivery import Delivery


class Handoff(abc.ABC):
    @abc.abstractmethod
    def accept(self, delivery: Delivery) -> Claim:
        """Claim.NEW only once the broker holds the delivery; DUPLICATE for a
        delivery id already enqueued, IN_FLIGHT for one another request is still
        enqueueing. Raises EnqueueFailed (broker unreachable) or redis.RedisError
        (state store unreachable); either way nothing was acknowledged."""

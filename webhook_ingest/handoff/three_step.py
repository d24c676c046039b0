"""How the receiver makes a verified delivery durable, and what its claim says.

`accept` returns Claim.NEW only once the broker holds the delivery; DUPLICATE
for a delivery id already enqueued, IN_FLIGHT for one still being enqueued by
another request. It raises EnqueueFailed (broker unreachable) or
redis.RedisError (state store unreachable); either way nothing was acknowledged.

With the broker on the state's Redis server this is one Lua call
(webhook_ingest.handoff.single_script); otherwise three steps: claim as `pending`,
publish through kombu (with publisher confirms on RabbitMQ), confirm the claim.
"""

from __future__ import annotations

import logging

from celery import Celery

from webhook_ingest.handoff.claims import Claim, DeliveryClaims
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.handoff.publish import EnqueueFailed, enqueue
from webhook_ingest.handoff.single_script import RedisDirectEnqueue
from webhook_ingest.services import Services

log = logging.getLogger(__name__)


class ReceiverQueue:
    def __init__(self, services: Services, celery_app: Celery) -> None:
        self._claims: DeliveryClaims = services.claims
        self._celery = celery_app
        settings = services.settings
        self.direct: RedisDirectEnqueue | None = None
        if RedisDirectEnqueue.applies(celery_app, settings.redis_url):
            self.direct = RedisDirectEnqueue(
                services.redis, celery_app, settings.redis_url, settings.dedup_ttl_seconds
            )

    def accept(self, delivery: Delivery) -> Claim:
        if self.direct is not None:
            return self.direct.accept(delivery)
        claim = self._claims.claim(delivery.provider, delivery.delivery_id)
        if claim is not Claim.NEW:
            return claim
        try:
            enqueue(self._celery, delivery)
        except EnqueueFailed:
            self._release(delivery)
            raise
        try:
            self._claims.confirm(delivery.provider, delivery.delivery_id)
        except Exception:  # enqueued is what matters; the pending claim expires by itself
            log.warning(
                "could not confirm delivery claim",
                extra={"provider": delivery.provider, "delivery_id": delivery.delivery_id},
            )
        return Claim.NEW

    def _release(self, delivery: Delivery) -> None:
        try:
            self._claims.release(delivery.provider, delivery.delivery_id)
        except Exception:  # Redis down too: the pending claim expires within seconds
            log.warning("could not release delivery claim", extra={"provider": delivery.provider})

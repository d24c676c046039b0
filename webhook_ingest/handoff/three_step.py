"""The hand-off for any broker: claim as `pending`, publish, confirm as `enqueued`.

A crash between the steps leaves a `pending` claim that expires by itself
(claims.PENDING_TTL_SECONDS), after which the provider's retry is taken; a
failed publish releases the claim at once.
"""

from __future__ import annotations

import logging

from celery import Celery

from webhook_ingest.handoff.base import Handoff
from webhook_ingest.handoff.claims import Claim, DeliveryClaims
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.handoff.publish import EnqueueFailed, enqueue

log = logging.getLogger(__name__)


class ThreeStepHandoff(Handoff):
    def __init__(self, claims: DeliveryClaims, celery_app: Celery) -> None:
        self._claims = claims
        self._celery = celery_app

    def accept(self, delivery: Delivery) -> Claim:
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

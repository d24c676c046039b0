"""The hand-off for any broker: claim and journal in one script, then publish.

The 2xx rests on the journal record: a receiver that dies after the script and
before the publish leaves a record that beat redrives (handoff.journal), and a
provider's retry meanwhile is answered as a duplicate at once. A publish that
fails answers 503 (the broker is away) but keeps the record, for the same
reason: a concurrent retry may already have been told the delivery is ours.
"""

from __future__ import annotations

from dataclasses import replace

from celery import Celery

from webhook_ingest.handoff.base import Handoff
from webhook_ingest.handoff.claims import Claim, DeliveryClaims
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.handoff.journal import Journal
from webhook_ingest.handoff.publish import enqueue


class JournalThenPublishHandoff(Handoff):
    def __init__(self, claims: DeliveryClaims, journal: Journal, celery_app: Celery) -> None:
        self._claims = claims
        self._journal = journal
        self._celery = celery_app

    def accept(self, delivery: Delivery) -> Claim:
        delivery = replace(delivery, journaled=True)
        claim = self._claims.claim(delivery, self._journal.record(delivery))
        if claim is Claim.NEW:
            enqueue(self._celery, delivery)  # EnqueueFailed: 503, the journal keeps it
        return claim

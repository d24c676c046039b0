"""The hand-off for any broker: claim and journal in one script, then publish.

The 2xx rests on the journal record: a receiver that dies after the script and
before the publish leaves a record that beat redrives (handoff.journal), and a
provider's retry meanwhile is answered as a duplicate at once. A publish that
fails answers 503 (the broker is away) but keeps the record, for the same
reason: a concurrent retry may already have been told the delivery is ours.

With REDIS_MIN_REPLICA_ACKS the claim script is followed by a WAIT on its
connection (webhook_ingest.state.replica_acks), before the publish. Too few replicas:
the delivery is still published (the record exists on the master, and the worker
finishes it at once instead of at the redrive) and the answer is 503; a
record a failover then loses makes its message a no-op for the worker (its
record is gone) until the provider's retry, claimed anew, journals it again:
then whichever copy comes first applies it, once.
"""

from __future__ import annotations

from dataclasses import replace

import redis
from celery import Celery

from celeryconfig import UNMATCHED_QUEUE
from webhook_ingest.handoff.base import Handoff
from webhook_ingest.handoff.claims import Claim, DeliveryClaims
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.handoff.journal import Journal
from webhook_ingest.handoff.publish import enqueue
from webhook_ingest.state import keys
from webhook_ingest.state.replica_acks import ReplicaAcks


class JournalThenPublishHandoff(Handoff):
    def __init__(
        self,
        claims: DeliveryClaims,
        journal: Journal,
        celery_app: Celery,
        client: redis.Redis | None = None,
        acks: ReplicaAcks | None = None,
    ) -> None:
        self._claims = claims
        self._acks = acks
        self._journal = journal
        self._celery = celery_app
        self._redis = client

    def accept(self, delivery: Delivery, client: str = "") -> Claim:
        delivery = replace(delivery, journaled=True)
        record = self._journal.record(delivery)
        claim, acked = self._claims.claim_acked(delivery, record, client, acks=self._acks)
        if claim is Claim.NEW:
            # EnqueueFailed: 503, the journal keeps it
            enqueue(self._celery, delivery, self._queue_for(delivery))
        if self._acks is not None:
            self._acks.require(acked)  # ReplicasBehind: 503
        return claim

    def _queue_for(self, delivery: Delivery) -> str | None:
        """The unmatched queue for a job with no mapping (as single_script does:
        a flood of those must not queue before registered jobs' deliveries); the
        default queue otherwise, or when the state Redis cannot say."""
        if self._redis is None or not delivery.job_id:
            return None
        try:
            registered = self._redis.exists(keys.job_mapping(delivery.job_id))
        except redis.RedisError:
            return None
        return None if registered else UNMATCHED_QUEUE

"""The hand-off: how the receiver makes a verified delivery durable before a 2xx.

Every way writes the delivery's claim and its journal record (handoff.journal)
in one atomic step; the 2xx rests on that record, which the worker removes with
the delivery's outcome and beat redrives if nobody does. Two ways behind one
interface (`Handoff.accept`):

- single_script: the broker is a database of the state's Redis server (the
  default): claim, journal and the broker's copy are one Lua script;
- journal_then_publish: any other broker (RabbitMQ, a separate Redis server):
  claim and journal in one script, then publish through kombu (publisher
  confirms on RabbitMQ).

`build_handoff` picks the one the configuration allows.
"""

from __future__ import annotations

import redis
from celery import Celery

from webhook_ingest.config import Settings
from webhook_ingest.handoff.base import Handoff
from webhook_ingest.handoff.claims import Claim, DeliveryClaims, RateLimit, RateLimited
from webhook_ingest.handoff.journal import Journal
from webhook_ingest.handoff.journal_then_publish import JournalThenPublishHandoff
from webhook_ingest.handoff.single_script import SingleScriptHandoff
from webhook_ingest.state.replica_acks import ReplicaAcks

__all__ = [
    "Claim",
    "Handoff",
    "JournalThenPublishHandoff",
    "RateLimit",
    "RateLimited",
    "SingleScriptHandoff",
    "build_handoff",
]


def build_handoff(
    settings: Settings,
    client: redis.Redis,
    claims: DeliveryClaims,
    journal: Journal,
    celery_app: Celery,
) -> Handoff:
    acks = receiver_acks(settings, client)
    if SingleScriptHandoff.applies(celery_app, settings.redis_url):
        return SingleScriptHandoff(
            client,
            celery_app,
            settings.redis_url,
            claims.seen,
            journal,
            claims.rate,
            acks,
        )
    return JournalThenPublishHandoff(claims, journal, celery_app, client, acks)


def receiver_acks(settings: Settings, client: redis.Redis) -> ReplicaAcks | None:
    """REDIS_MIN_REPLICA_ACKS for the receiver; None when 0 (no WAIT sent)."""
    if not settings.redis_min_replica_acks:
        return None
    return ReplicaAcks(
        client,
        settings.redis_min_replica_acks,
        settings.redis_replica_ack_timeout_ms,
        process="receiver",
    )

"""The hand-off: how the receiver makes a verified delivery durable before a 2xx.

Two ways behind one interface (`Handoff.accept`):

- single_script: the broker is a database of the state's Redis server (the
  default): claim and enqueue are one Lua script, one round trip;
- three_step: any other broker (RabbitMQ, a separate Redis server): claim as
  `pending`, publish through kombu (publisher confirms on RabbitMQ), confirm.

`build_handoff` picks the one the configuration allows.
"""

from __future__ import annotations

import redis
from celery import Celery

from webhook_ingest.config import Settings
from webhook_ingest.handoff.base import Handoff
from webhook_ingest.handoff.claims import Claim, DeliveryClaims
from webhook_ingest.handoff.single_script import SingleScriptHandoff
from webhook_ingest.handoff.three_step import ThreeStepHandoff

__all__ = ["Claim", "Handoff", "SingleScriptHandoff", "ThreeStepHandoff", "build_handoff"]


def build_handoff(
    settings: Settings, client: redis.Redis, claims: DeliveryClaims, celery_app: Celery
) -> Handoff:
    if SingleScriptHandoff.applies(celery_app, settings.redis_url):
        return SingleScriptHandoff(
            client, celery_app, settings.redis_url, settings.dedup_ttl_seconds
        )
    return ThreeStepHandoff(claims, celery_app)

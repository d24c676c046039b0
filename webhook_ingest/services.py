"""The long-lived objects a process needs, built once from validated settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import redis

from webhook_ingest import redis_client
from webhook_ingest.config import Settings, load_settings
from webhook_ingest.handoff.claims import DeliveryClaims, RateLimit
from webhook_ingest.handoff.journal import Journal
from webhook_ingest.handoff.seen import SeenDeliveries
from webhook_ingest.operations.dead_letters import DeadLetters
from webhook_ingest.operations.raw_deliveries import RawDeliveries
from webhook_ingest.providers import Provider, load_providers
from webhook_ingest.state.ignored import IgnoredDeliveries
from webhook_ingest.state.job_registry import JobRegistry
from webhook_ingest.state.replica_acks import ReplicaAcks
from webhook_ingest.state.store import StateStore


@dataclass(frozen=True)
class Services:
    settings: Settings
    redis: redis.Redis
    state: StateStore
    jobs: JobRegistry
    claims: DeliveryClaims
    dead_letters: DeadLetters
    providers: dict[str, Provider]
    raw_deliveries: RawDeliveries
    ignored: IgnoredDeliveries
    journal: Journal
    # REDIS_MIN_REPLICA_ACKS as the worker applies it before a task is acknowledged
    # (the receiver's is part of its hand-off: handoff.receiver_acks)
    worker_acks: ReplicaAcks


def build_services(
    settings: Settings | None = None, environ: Mapping[str, str] | None = None
) -> Services:
    settings = settings or load_settings(environ)
    client = redis_client.connect(settings.redis_url)
    journal = Journal(client, redrive_after_seconds=settings.journal_redrive_after_seconds)
    providers = load_providers(settings, environ, redis=client)
    return Services(
        settings=settings,
        redis=client,
        state=StateStore(
            client,
            applied_ttl_seconds=settings.dedup_ttl_seconds,
            finished_window_seconds=settings.consistency_check_window_seconds,
            retried_under_same_id=frozenset(
                name for name, provider in providers.items() if provider.retries_under_same_id
            ),
        ),
        jobs=JobRegistry(client),
        claims=DeliveryClaims(
            client,
            SeenDeliveries.from_providers(providers, settings.dedup_ttl_seconds),
            rate=RateLimit.parse(settings.rate_limit),
        ),
        dead_letters=DeadLetters(
            client,
            settings.dead_letter_ttl_seconds,
            journal,
            max_per_provider=settings.dead_letter_max_per_provider,
            max_bytes_per_provider=settings.dead_letter_max_bytes_per_provider,
        ),
        providers=providers,
        raw_deliveries=RawDeliveries(client, retention_seconds=settings.raw_retention_seconds),
        ignored=IgnoredDeliveries(client),
        journal=journal,
        worker_acks=ReplicaAcks(
            client,
            settings.redis_min_replica_acks,
            settings.redis_replica_ack_timeout_ms,
            process="worker",
        ),
    )

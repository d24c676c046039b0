"""Adopting job mappings that other services wrote with a plain HSET.

The TypeScript connectors (and any other service) may write `job_mapping:{id}`
directly; such jobs must be polled and matched like our own. Each beat tick
walks part of the keyspace (SCAN from a stored cursor, ADOPTION_SCAN_BUDGET keys)
and indexes the unfinished jobs it finds: into their provider's live index for
the orphan poller, and into the external-id index for webhooks that name only
the provider's id.
"""

from __future__ import annotations

from dataclasses import dataclass

from webhook_ingest.clock import now_ms as _now_ms
from webhook_ingest.services import Services
from webhook_ingest.state import keys
from webhook_ingest.state.job_update import TERMINAL_STATUSES

SCAN_BATCH = 1000


@dataclass(frozen=True)
class Adoption:
    scanned: int
    adopted: int
    cursor: int


class MappingAdoption:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._redis = services.redis

    def adopt(self, budget: int | None = None) -> Adoption:
        """Walk part of the keyspace for `job_mapping:*` we do not index yet."""
        budget = budget or self._services.settings.adoption_scan_budget
        cursor = int(self._redis.get(keys.ADOPTION_CURSOR) or 0)
        scanned = adopted = 0
        while scanned < budget:
            batch = min(SCAN_BATCH, budget - scanned)
            cursor, names = self._redis.scan(cursor, match="job_mapping:*", count=batch)
            scanned += batch
            adopted += self._adopt_batch(names)
            if cursor == 0:
                break
        self._redis.set(keys.ADOPTION_CURSOR, cursor)
        return Adoption(scanned=scanned, adopted=adopted, cursor=cursor)

    def _adopt_batch(self, names: list[str]) -> int:
        if not names:
            return 0
        job_ids = [name.removeprefix("job_mapping:") for name in names]
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(
                    keys.job_mapping(job_id),
                    "provider",
                    "external_job_id",
                    "created_at",
                    "last_webhook_update",
                )
                pipe.hget(keys.job_state(job_id), "status")
            replies = pipe.execute()
        now = _now_ms()
        with self._redis.pipeline(transaction=False) as pipe:
            for index, job_id in enumerate(job_ids):
                provider, external_id, created_at, last_update = replies[2 * index]
                status = replies[2 * index + 1]
                if provider not in self._services.providers or status in TERMINAL_STATUSES:
                    continue
                since = next((int(v) for v in (last_update, created_at) if v and v.isdigit()), now)
                # NX: a job we index already keeps its schedule.
                pipe.zadd(keys.live_jobs(provider), {job_id: since}, nx=True)
                if external_id:
                    pipe.set(keys.external_index(provider, external_id), job_id, nx=True)
            results = pipe.execute()
        added_to_live_index = [r for r in results if not isinstance(r, bool | None)]
        return sum(added_to_live_index)

"""Where a job is polled, remembered at submit, for providers whose id alone does not say.

fal's status URL needs the app the request was submitted to, RunPod's the
endpoint; neither is part of the provider's id or of its webhook payload. The
job's external id must stay the provider's own id: webhooks name it, the job
registry matches the two exactly, and other services write it with a plain HSET.
So submit records the missing part beside the id, in a key of its own, for as
long as a job may still need polling.

A job started elsewhere and registered (`POST /jobs` with `app_id` for fal,
`endpoint_id` for RunPod, or a plain HSET of that field by another service)
carries it in its mapping instead: `for_job` looks there second.
"""

from __future__ import annotations

import logging

import redis

from webhook_ingest.state import keys

log = logging.getLogger(__name__)

# Longer than any job runs plus the poller's backoff; providers forget results sooner.
TTL_SECONDS = 7 * 24 * 3600


class PollTargets:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def remember(self, provider: str, external_id: str, target: str) -> None:
        """Best effort: the job already runs at the provider, and losing its mapping
        (an exception here) would be worse than losing the orphan poll."""
        try:
            self._redis.set(keys.poll_target(provider, external_id), target, ex=TTL_SECONDS)
        except redis.RedisError:
            log.error(
                "could not record where to poll a job; it can be recovered by webhook only",
                extra={"provider": provider, "external_job_id": external_id},
            )

    def recall(self, provider: str, external_id: str) -> str | None:
        return self._redis.get(keys.poll_target(provider, external_id))

    def for_job(self, provider: str, job_id: str, external_id: str, field: str) -> str | None:
        """Where to poll a job: what submit recorded for its id (the provider said
        so), else the `field` of its mapping (given when it was registered)."""
        recorded = self.recall(provider, external_id)
        if recorded:
            return recorded
        return self._redis.hget(keys.job_mapping(job_id), field) or None

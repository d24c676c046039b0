"""Recovering jobs whose webhook never came: find them, ask the provider, apply.

A job is live while it is not terminal; its score in the provider's live index
is when we last heard of it. A tick takes the stale end of each index (score
older than ORPHAN_AFTER_SECONDS), at most the provider's poll budget, and moves
those jobs one interval forward in the same atomic step, so each stale job is
polled once per interval however many ticks or beats run. The cost of a tick
grows with the stale jobs it returns, not with the jobs tracked.

A poll whose answer is definitive (a terminal status, a provider's own error
such as Stability's content moderation, a 404 after the grace period) ends the
job. One that fails (5xx, 429, timeouts, an answer we cannot read) is asked
again with backoff, but not forever: after ORPHAN_GIVE_UP_SECONDS of failing
polls the job is failed with a reason that says so.

Mappings that other services wrote with a plain HSET enter the indexes through
webhook_ingest.operations.adoption.
"""

from __future__ import annotations

import enum
import logging
import math

from webhook_ingest.clock import now_ms as _now_ms
from webhook_ingest.observability.metrics import ORPHANS_GIVEN_UP
from webhook_ingest.providers import JobRef, PayloadError
from webhook_ingest.providers.base import NotPollable
from webhook_ingest.providers.http import ProviderError, ProviderNotFound, ProviderUnavailable
from webhook_ingest.services import Services
from webhook_ingest.state.job_update import (
    FAILED,
    SOURCE_ORPHAN_POLL,
    TERMINAL_STATUSES,
)
from webhook_ingest.state.store import Outcome, keys

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 3600

_TAKE_DUE_LUA = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], id)
end
return ids
"""


class PollOutcome(enum.StrEnum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    FINISHED = "finished"  # already terminal here: left the live index
    FORGOTTEN = "forgotten"  # no mapping any more: left the live index
    NOT_FOUND = "not_found"  # the provider no longer knows it: failed
    BACKING_OFF = "backing_off"  # provider error: asked again later
    GAVE_UP = "gave_up"  # polls failed for ORPHAN_GIVE_UP_SECONDS: failed


class OrphanPoller:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._redis = services.redis
        self._take_due = self._redis.register_script(_TAKE_DUE_LUA)
        settings = services.settings
        self.interval_ms = settings.orphan_poll_interval_seconds * 1000
        self.orphan_after_ms = settings.orphan_after_seconds * 1000
        self.polls_per_tick = max(
            1,
            math.floor(
                settings.orphan_polls_per_minute * settings.orphan_poll_interval_seconds / 60
            ),
        )

    @property
    def providers_scanned_per_tick(self) -> list[str]:
        """The providers that can be asked (a declarative one without a `poll` block
        cannot): each has a live index, read every tick up to its own poll budget.
        Jobs of the others stay in theirs, left to their webhooks."""
        return sorted(name for name, p in self._services.providers.items() if p.can_poll())

    # -- the tick ---------------------------------------------------------------

    def take_due(self, now_ms: int | None = None) -> dict[str, list[str]]:
        """Stale jobs per provider, each rescheduled one interval ahead."""
        now = _now_ms() if now_ms is None else now_ms
        cutoff = now - self.orphan_after_ms
        # Due again after one interval unless an update arrives meanwhile.
        next_score = cutoff + self.interval_ms
        due = {}
        for provider in self.providers_scanned_per_tick:
            ids = self._take_due(
                keys=[keys.live_jobs(provider)], args=[cutoff, self.polls_per_tick, next_score]
            )
            if ids:
                due[provider] = ids
        return due

    # -- one job ----------------------------------------------------------------

    def poll(self, provider_name: str, job_id: str, now_ms: int | None = None) -> PollOutcome:
        now = _now_ms() if now_ms is None else now_ms
        live = keys.live_jobs(provider_name)
        mapping = self._services.jobs.mapping(job_id)
        if not mapping or mapping.get("provider") != provider_name:
            return self._leave(live, job_id, PollOutcome.FORGOTTEN)
        if self._redis.hget(keys.job_state(job_id), "status") in TERMINAL_STATUSES:
            return self._leave(live, job_id, PollOutcome.FINISHED)
        external_id = mapping.get("external_job_id")
        if not external_id:
            return self._leave(live, job_id, PollOutcome.FORGOTTEN)

        provider = self._services.providers[provider_name]
        job = JobRef(job_id=job_id, provider=provider_name, external_job_id=external_id)
        context = {"job_id": job_id, "provider": provider_name}
        try:
            update = provider.poll_job_status(job)
        except ProviderNotFound:
            if now - self._known_since(job_id, mapping, now) < self._grace_ms:
                return self._failed_poll(job, now, "provider answered 404")
            update = provider.update(
                job,
                FAILED,
                source=SOURCE_ORPHAN_POLL,
                provider_status=None,  # a 404 names no status of the provider's
                error_message=(
                    f"{provider_name} no longer knows job {external_id} (HTTP 404): "
                    "it expired before its result was collected, or never existed"
                ),
            )
            self._services.state.apply(update)
            self._forget_failures(job_id)
            log.warning("orphan failed: unknown to the provider", extra=context)
            return PollOutcome.NOT_FOUND
        except NotPollable:
            return self._left_to_webhook(live, job_id, now)
        except (ProviderUnavailable, ProviderError, PayloadError) as exc:
            log.warning("orphan poll failed: %s", exc, extra=context)
            return self._failed_poll(job, now, str(exc), getattr(exc, "retry_after", None))

        applied = self._services.state.apply(update)
        self._forget_failures(job_id)
        if applied.outcome is Outcome.APPLIED:
            return PollOutcome.APPLIED
        if applied.outcome is Outcome.TERMINAL:
            return self._leave(live, job_id, PollOutcome.FINISHED)
        return PollOutcome.UNCHANGED

    def _leave(self, live: str, job_id: str, outcome: PollOutcome) -> PollOutcome:
        """The job needs no more polling: out of the index, its failures forgotten."""
        self._redis.zrem(live, job_id)
        self._forget_failures(job_id)
        return outcome

    @property
    def _grace_ms(self) -> int:
        return self._services.settings.orphan_not_found_grace_seconds * 1000

    def _known_since(self, job_id: str, mapping: dict[str, str], now: int) -> int:
        for field in ("created_at", "last_webhook_update"):
            if mapping.get(field, "").isdigit():
                return int(mapping[field])
        # A mapping with no times: count from the first 404 we saw.
        first = f"{job_id}:first_404"
        self._redis.hsetnx(keys.POLL_FAILURES, first, now)
        return int(self._redis.hget(keys.POLL_FAILURES, first))

    @property
    def _give_up_ms(self) -> int:
        return self._services.settings.orphan_give_up_seconds * 1000

    def _failed_poll(
        self, job: JobRef, now: int, reason: str, retry_after: float | None = None
    ) -> PollOutcome:
        """Asked again later, unless its polls have been failing for the give-up bound."""
        since = self._failing_since(job.job_id, now)
        if now - since >= self._give_up_ms:
            return self._give_up(job, now - since, reason)
        return self._back_off(job.provider, job.job_id, now, since, retry_after)

    def _failing_since(self, job_id: str, now: int) -> int:
        """When the job's current run of failed polls began (a good answer ends a run)."""
        field = f"{job_id}:failing_since"
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.hsetnx(keys.POLL_FAILURES, field, now)
            pipe.hget(keys.POLL_FAILURES, field)
            return int(pipe.execute()[1])

    def _give_up(self, job: JobRef, failing_ms: int, reason: str) -> PollOutcome:
        give_up_s = self._services.settings.orphan_give_up_seconds
        update = self._services.providers[job.provider].update(
            job,
            FAILED,
            source=SOURCE_ORPHAN_POLL,
            provider_status=None,  # the provider said nothing we could read
            error_message=(
                f"gave up polling {job.provider} for job {job.external_job_id}: its polls "
                f"failed for {failing_ms // 1000} s (ORPHAN_GIVE_UP_SECONDS={give_up_s}); "
                f"last: {reason}"
            ),
        )
        applied = self._services.state.apply(update)
        live = keys.live_jobs(job.provider)
        if applied.outcome is Outcome.TERMINAL:  # finished meanwhile: nothing given up
            return self._leave(live, job.job_id, PollOutcome.FINISHED)
        self._forget_failures(job.job_id)
        ORPHANS_GIVEN_UP.labels(job.provider).inc()
        log.error(
            "orphan given up: its polls kept failing",
            extra={"job_id": job.job_id, "provider": job.provider, "failing_s": failing_ms // 1000},
        )
        return PollOutcome.GAVE_UP

    def _back_off(
        self,
        provider_name: str,
        job_id: str,
        now: int,
        failing_since: int,
        retry_after: float | None = None,
    ) -> PollOutcome:
        failures = self._redis.hincrby(keys.POLL_FAILURES, job_id, 1)
        delay_ms = min(self.interval_ms * 2 ** (failures - 1), MAX_BACKOFF_SECONDS * 1000)
        # The last try comes at the give-up bound, not up to an hour after it.
        delay_ms = min(delay_ms, failing_since + self._give_up_ms - now)
        if retry_after:  # the provider said when to come back: not sooner
            delay_ms = max(delay_ms, int(retry_after * 1000))
        # XX: a job that finished meanwhile stays out of the index.
        self._redis.zadd(
            keys.live_jobs(provider_name), {job_id: now - self.orphan_after_ms + delay_ms}, xx=True
        )
        return PollOutcome.BACKING_OFF

    def _left_to_webhook(self, live: str, job_id: str, now: int) -> PollOutcome:
        """A job the provider cannot be asked about: no poll was made, so none failed
        and no give-up clock runs; looked at again an hour later (XX: unless it
        finished meanwhile)."""
        next_due = now - self.orphan_after_ms + MAX_BACKOFF_SECONDS * 1000
        self._redis.zadd(live, {job_id: next_due}, xx=True)
        return PollOutcome.BACKING_OFF

    def _forget_failures(self, job_id: str) -> None:
        self._redis.hdel(
            keys.POLL_FAILURES, job_id, f"{job_id}:first_404", f"{job_id}:failing_since"
        )

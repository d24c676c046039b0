"""The consistency check: does the provider agree with what Redis says a job ended as?

Each run re-polls a random sample of jobs that finished recently (within
CONSISTENCY_CHECK_WINDOW_SECONDS, and at least CONSISTENCY_SETTLE_SECONDS ago so
late webhooks have landed) and compares the provider's normalized status with
`job_state`. It only observes: disagreements are counted
(`webhook_consistency_checks_total`) and logged, never written back — a wrong
terminal state is for an operator to look at, not for a sampler to overwrite.

Provider calls are bounded twice: a Redis lock lets one run at a time across
every worker and beat, and CONSISTENCY_CHECK_SAMPLE caps the jobs of a run.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from redis.exceptions import LockError

from webhook_ingest.clock import now_ms as _now_ms
from webhook_ingest.config import CONSISTENCY_SETTLE_SECONDS
from webhook_ingest.observability import metrics
from webhook_ingest.providers import JobRef, PayloadError
from webhook_ingest.providers.http import ProviderError
from webhook_ingest.services import Services
from webhook_ingest.state import keys
from webhook_ingest.state.job_update import TERMINAL_STATUSES

log = logging.getLogger(__name__)


class Verdict(enum.StrEnum):
    AGREE = "agree"
    DISAGREE = "disagree"
    UNAVAILABLE = "unavailable"  # the provider could not say (error, 404, odd answer)


@dataclass
class Summary:
    """What one run did; `locked` when another run held the lock and this one did nothing."""

    locked: bool = False
    candidates: int = 0  # finished jobs in the window and settled
    sampled: int = 0
    agree: int = 0
    disagree: int = 0
    unavailable: int = 0
    skipped: int = 0  # gone from Redis, no longer terminal, or out of time
    disagreements: list[str] = field(default_factory=list)  # job ids

    def as_dict(self) -> dict:
        return asdict(self)


class ConsistencyCheck:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._redis = services.redis
        settings = services.settings
        self.sample_size = settings.consistency_check_sample
        self.window_ms = settings.consistency_check_window_seconds * 1000
        self.settle_ms = CONSISTENCY_SETTLE_SECONDS * 1000
        # A crashed run's lock frees itself by the next scheduled run.
        self.lock_seconds = settings.consistency_check_interval_seconds

    @property
    def providers_that_can_poll(self) -> list[str]:
        """Providers whose `poll_job_status` can ask about a job at all: only their
        finished jobs can be compared (a declarative provider may have no poll)."""
        return sorted(name for name, p in self._services.providers.items() if p.can_poll())

    @contextmanager
    def lock(self) -> Iterator[bool]:
        """Yields whether this process holds the run lock; released on exit.

        redis-py's Lock releases only while the lock is still ours: a run that
        outlived its lock does not free the lock of the run that took over.
        """
        lock = self._redis.lock(keys.CONSISTENCY_LOCK, timeout=self.lock_seconds, blocking=False)
        held = lock.acquire()
        try:
            yield held
        finally:
            if held:
                try:
                    lock.release()
                except LockError:  # expired, maybe taken by the next run: theirs now
                    log.info("consistency check outlived its lock")

    def run(self, now_ms: int | None = None, time_budget_seconds: float | None = None) -> Summary:
        """One run, unless another holds the lock. Stops polling when the budget is spent."""
        now = _now_ms() if now_ms is None else now_ms
        budget = self.lock_seconds if time_budget_seconds is None else time_budget_seconds
        # Never poll past the lock's expiry: another run could start meanwhile.
        deadline = time.monotonic() + min(budget, self.lock_seconds)
        with self.lock() as held:
            if not held:
                log.info("consistency check skipped: another run holds the lock")
                return Summary(locked=True)
            summary = Summary()
            candidates = self.candidates(now)
            summary.candidates = len(candidates)
            sample = random.sample(candidates, min(self.sample_size, len(candidates)))
            summary.sampled = len(sample)
            for provider, job_id in sample:
                if time.monotonic() >= deadline:
                    summary.skipped += 1
                    continue
                verdict = self.check(provider, job_id)
                if verdict is None:
                    summary.skipped += 1
                    continue
                setattr(summary, verdict.value, getattr(summary, verdict.value) + 1)
                if verdict is Verdict.DISAGREE:
                    summary.disagreements.append(job_id)
        log.info(
            "consistency check: %d sampled of %d, %d agree, %d disagree, %d unavailable",
            summary.sampled,
            summary.candidates,
            summary.agree,
            summary.disagree,
            summary.unavailable,
            extra={
                "sampled": summary.sampled,
                "candidates": summary.candidates,
                "agree": summary.agree,
                "disagree": summary.disagree,
                "unavailable": summary.unavailable,
                "skipped": summary.skipped,
            },
        )
        return summary

    def candidates(self, now_ms: int) -> list[tuple[str, str]]:
        """(provider, job_id) of pollable jobs finished within the window and settled."""
        oldest, newest = now_ms - self.window_ms, now_ms - self.settle_ms
        found = []
        for provider in self.providers_that_can_poll:
            job_ids = self._redis.zrangebyscore(keys.finished_jobs(provider), oldest, newest)
            found.extend((provider, job_id) for job_id in job_ids)
        return found

    def check(self, provider_name: str, job_id: str) -> Verdict | None:
        """Ask the provider about one finished job; None when there is nothing to compare."""
        state = self._redis.hgetall(keys.job_state(job_id))
        ours = state.get("status")
        if ours not in TERMINAL_STATUSES or state.get("provider", provider_name) != provider_name:
            return None  # expired or rewritten by another service since it finished
        mapping = self._services.jobs.mapping(job_id)
        external_id = mapping.get("external_job_id") or state.get("external_job_id")
        if not external_id:
            return None
        job = JobRef(job_id=job_id, provider=provider_name, external_job_id=external_id)
        context = {"provider": provider_name, "job_id": job_id}
        try:
            theirs = self._services.providers[provider_name].poll_job_status(job).status
        except (ProviderError, PayloadError) as exc:
            log.info("consistency check: provider could not say: %s", exc, extra=context)
            return self._count(provider_name, Verdict.UNAVAILABLE)
        if theirs == ours:
            return self._count(provider_name, Verdict.AGREE)
        # Either both finished differently, or the provider says it is still running.
        log.warning(
            "consistency check: %s says %s, Redis says %s",
            provider_name,
            theirs,
            ours,
            extra={**context, "redis_status": ours, "provider_status": theirs},
        )
        return self._count(provider_name, Verdict.DISAGREE)

    @staticmethod
    def _count(provider: str, verdict: Verdict) -> Verdict:
        metrics.CONSISTENCY_CHECKS.labels(provider=provider, result=verdict.value).inc()
        return verdict

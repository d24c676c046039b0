"""Submitting a job: the provider call, then the mapping, before returning.

The mapping cannot be written before the provider names its id, so a webhook
can beat it: the worker then retries the delivery until the mapping exists
(UNMATCHED_RETRY_SECONDS), which is why submit registers before it returns.
"""

from __future__ import annotations

import logging

from webhook_ingest.providers import JobRequest
from webhook_ingest.services import Services
from webhook_ingest.state.job_registry import Registration

log = logging.getLogger(__name__)


class JobConflict(Exception):
    """The job id or the provider's id is already mapped to something else."""


def submit_job(services: Services, provider_name: str, job: JobRequest) -> str:
    """Submit `job` to the provider and record its mapping; return the provider's id."""
    provider = services.providers[provider_name]
    external_id = provider.submit(job)
    outcome = services.jobs.register(job.job_id, provider.name, external_id)
    if outcome is Registration.CONFLICT:
        # The provider runs a job nobody will track: say so loudly, with both ids.
        log.error(
            "submitted job conflicts with an existing mapping",
            extra={"job_id": job.job_id, "provider": provider.name, "external_job_id": external_id},
        )
        raise JobConflict(f"job {job.job_id} or {provider.name} id {external_id} is mapped already")
    return external_id

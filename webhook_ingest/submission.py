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


class Submitted(str):
    """What `submit_job` returns: the provider's id for the job, as before (a `str`,
    so callers that compare or store it keep working), with `webhook_url`, the URL
    the provider was given for the job (None for a provider without webhooks).

    A URL with a token (RunPod) is a secret: its `repr` leaves it out, so a logged
    or printed result shows the id only.
    """

    webhook_url: str | None

    def __new__(cls, external_job_id: str, webhook_url: str | None) -> Submitted:
        submitted = super().__new__(cls, external_job_id)
        submitted.webhook_url = webhook_url
        return submitted

    @property
    def external_job_id(self) -> str:
        return str(self)


def submit_job(services: Services, provider_name: str, job: JobRequest) -> Submitted:
    """Submit `job` to the provider and record its mapping; return the provider's id
    (a `Submitted`: a `str` that also carries the job's `webhook_url`)."""
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
    return Submitted(external_id, provider.job_webhook_url(job.job_id))

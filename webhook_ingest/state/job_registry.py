"""The job registry: `job_mapping:{job_id}` plus the indexes this service needs.

The mapping hash is shared with the rest of the job system (other services may
write it with a plain HSET). Registering also writes the reverse index
(provider + external id -> job) and the live-job index in the same atomic step,
so a webhook that races the submit finds its job as soon as the mapping exists.
"""

from __future__ import annotations

import enum

import redis

from webhook_ingest.clock import now_ms
from webhook_ingest.providers.base import JobRef
from webhook_ingest.state import keys

_REGISTER_LUA = """
local mapping_key, index_key, live_key, state_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job_id, provider, external_id, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
-- where the job is polled, for providers whose id does not say ('' when not given)
local target_field, target = ARGV[5], ARGV[6]
local current = redis.call('HMGET', mapping_key, 'provider', 'external_job_id')
-- the provider's id must not already lead to another job, however that was written
local owner = redis.call('GET', index_key)
if owner and owner ~= job_id then return 'conflict' end
if current[1] or current[2] then
  if current[1] ~= provider or current[2] ~= external_id then return 'conflict' end
  if target_field ~= '' then
    local known = redis.call('HGET', mapping_key, target_field)
    if known and known ~= target then return 'conflict' end
  end
else
  redis.call('HSET', mapping_key, 'external_job_id', external_id, 'provider', provider,
             'created_at', now, 'last_webhook_update', now)
end
if target_field ~= '' then redis.call('HSET', mapping_key, target_field, target) end
redis.call('SET', index_key, job_id)
local status = redis.call('HGET', state_key, 'status')
if status ~= 'completed' and status ~= 'failed' then
  redis.call('ZADD', live_key, 'NX', now, job_id)
end
if current[1] then return 'exists' end
return 'created'
"""


# Bounded (it becomes part of Redis keys and provider URLs), printable and without
# whitespace: what every provider's ids look like. Not a URL rule: ids are quoted
# wherever they go into a URL (providers.http.path_segment), which is the defence.
MAX_EXTERNAL_ID_LENGTH = 256


def external_id_problem(value: str) -> str | None:
    """Why `value` cannot be a provider's id for a job, or None when it can."""
    if not value:
        return "must not be empty"
    if len(value) > MAX_EXTERNAL_ID_LENGTH:
        return f"must be at most {MAX_EXTERNAL_ID_LENGTH} characters"
    # isprintable: no control, format or separator characters (Unicode's, too),
    # except the ASCII space, refused here with every other whitespace.
    if not value.isprintable() or any(c.isspace() for c in value):
        return "must be printable, without whitespace or control characters"
    if value in (".", ".."):  # a URL's dot segment, whatever the quoting
        return "must not be . or .."
    return None


class InvalidExternalId(ValueError):
    """Not something a provider would name a job; nothing was written."""


class Registration(enum.StrEnum):
    CREATED = "created"
    EXISTS = "exists"  # the same mapping was registered before: idempotent
    CONFLICT = "conflict"  # the job or the external id is mapped differently


class JobNotFound(Exception):
    """No mapping yet: the provider may have called back before the submitter wrote it."""


class JobMismatch(Exception):
    """The delivery names a job whose mapping says otherwise; retrying will not help."""


class JobRegistry:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._register = client.register_script(_REGISTER_LUA)

    def register(
        self,
        job_id: str,
        provider: str,
        external_job_id: str,
        poll_target: tuple[str, str] | None = None,
    ) -> Registration:
        """Map `job_id` to the provider's id. `poll_target`: (mapping field, value)
        saying where the job is polled, for providers whose id does not say
        (providers.poll_targets); a different value already there is a conflict.
        Raises InvalidExternalId (nothing written) for an id no provider would give."""
        problem = external_id_problem(external_job_id)
        if problem:
            raise InvalidExternalId(f"external_job_id {problem}")
        target_field, target = poll_target or ("", "")
        reply = self._register(
            keys=[
                keys.job_mapping(job_id),
                keys.external_index(provider, external_job_id),
                keys.live_jobs(provider),
                keys.job_state(job_id),
            ],
            args=[job_id, provider, external_job_id, now_ms(), target_field, target],
        )
        return Registration(reply)

    def mapping(self, job_id: str) -> dict[str, str]:
        return self._redis.hgetall(keys.job_mapping(job_id))

    def resolve(self, provider: str, job_id: str | None, external_job_id: str) -> JobRef:
        """The job a delivery is about: from the URL, else from the provider's id."""
        if job_id is None:
            job_id = self._redis.get(keys.external_index(provider, external_job_id))
            if job_id is None:
                raise JobNotFound(f"no job registered for {provider} id {external_job_id}")
        mapping = self.mapping(job_id)
        if not mapping:
            raise JobNotFound(f"job {job_id} has no mapping yet")
        if mapping.get("provider") and mapping["provider"] != provider:
            raise JobMismatch(f"job {job_id} belongs to provider {mapping['provider']}")
        mapped_external = mapping.get("external_job_id")
        if not mapped_external:
            # Another service may write the mapping in steps (a plain HSET of the
            # provider first, the provider's id once it has it). Until the id is
            # there nothing proves the delivery is about this job: anyone's
            # prediction could be written into it. Not matched yet, so retried.
            raise JobNotFound(f"job {job_id} has no {provider} id in its mapping yet")
        if mapped_external != external_job_id:
            raise JobMismatch(f"job {job_id} is mapped to another {provider} id")
        return JobRef(job_id=job_id, provider=provider, external_job_id=external_job_id)

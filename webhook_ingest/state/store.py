"""The one place job state is written: `apply(update)`.

Webhooks and orphan polls both end here, so ordering, duplicates and races are
solved once, inside one Lua script that Redis runs atomically:

- a delivery already finished changes nothing: its journal record is gone
  (handoff.journal), or, for a message from a version before the journal, its
  id is in the job's applied set;
- a terminal status (completed, failed) is final: later or late-arriving
  observations are ignored — with one exception: a provider whose API runs a
  failed job again under the same id (`Provider.retries_under_same_id`, RunPod's
  /retry) may turn `failed` into `completed` (its error message is cleared then);
  `completed` stays final for every provider;
- progress never goes down, and `completed` means 100;
- when anything changed, the merged state is written, the mapping is touched, and
  the update is published on `job_progress:{job_id}` and `job_updates`. The
  published result is the stored one unless its JSON text is longer than
  BROADCAST_MAX_RESULT_BYTES: then the message carries `"result": null`,
  `"result_omitted": true` and `"result_size"` (the stored text's bytes), and
  subscribers read the result from `job_state:{job_id}`.

The same script also keeps what operators look at: the job's last few
observations and their outcomes (`keys.job_events`), and, when a job finishes,
its entry in the provider's index of recently finished jobs (`keys.finished_jobs`),
which the consistency check samples.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

import redis

from webhook_ingest.observability import metrics
from webhook_ingest.state import keys
from webhook_ingest.state.job_update import SOURCE_WEBHOOK, JobStateUpdate, result_json, validated

_APPLY_LUA = """
local state_key, mapping_key, applied_key, live_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local poll_failures_key, events_key, finished_key = KEYS[5], KEYS[6], KEYS[7]
local job_id, status, progress, result = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local error_message, external_id, provider, source = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local updated_at, delivery_id, applied_ttl = ARGV[9], ARGV[10], tonumber(ARGV[11])
local progress_channel, updates_channel = ARGV[12], ARGV[13]
local events_keep, finished_cutoff, finished_ttl_ms = tonumber(ARGV[14]), ARGV[15], ARGV[16]
local finished_keep = tonumber(ARGV[17])
local provider_status = ARGV[18]
local failed_may_complete, broadcast_max_result = ARGV[20], tonumber(ARGV[21])

local journal_member = ARGV[19]

local function str(value)
  if value == nil or value == false or value == '' then return 'null' end
  return cjson.encode(value)
end

-- Every observation leaves a trace for operators, whatever became of it; written
-- here so it costs no extra round trip and always matches the decision taken.
-- Its progress is the observation's own (null: the provider said nothing), and
-- beside our status is the provider's own word for it (null if it gave none).
local observed_progress = 'null'
if status == 'completed' then observed_progress = 100
elseif progress >= 0 then observed_progress = progress end
local function record(outcome)
  local event = '{"at":' .. updated_at
    .. ',"source":' .. cjson.encode(source)
    .. ',"delivery_id":' .. str(delivery_id)
    .. ',"status":' .. cjson.encode(status)
    .. ',"provider_status":' .. str(provider_status)
    .. ',"progress":' .. observed_progress
    .. ',"outcome":"' .. outcome .. '"}'
  redis.call('LPUSH', events_key, event)
  redis.call('LTRIM', events_key, 0, events_keep - 1)
  redis.call('EXPIRE', events_key, applied_ttl)
end

-- Whatever becomes of this observation, its delivery is finished: the journal
-- record the receiver's acknowledgment rests on goes in this same atomic step.
-- A record already gone means another copy of the delivery finished it (a
-- redelivery, a redrive racing its original): this one is a duplicate, and of two
-- copies applying at once only one can remove the record. So a journaled delivery
-- needs nothing kept after it is finished.
if journal_member ~= '' then
  redis.call('ZREM', KEYS[8], journal_member)
  if redis.call('HDEL', KEYS[9], journal_member) == 0 then
    record('duplicate')
    return {'duplicate'}
  end
  -- A dead letter parked by a version before the journal is journaled when it is
  -- replayed: the applied set that version kept still says if it was applied
  -- (a lookup of a key that is usually missing: no memory, next to no time).
  if delivery_id ~= '' and redis.call('SISMEMBER', applied_key, delivery_id) == 1 then
    record('duplicate')
    return {'duplicate'}
  end
elseif delivery_id ~= '' then
  -- A message from a version before the journal: only the job's applied set can
  -- say it was applied before. These drain from the queues after an upgrade, and
  -- the set expires DELIVERY_DEDUP_TTL_SECONDS after the last of them.
  if redis.call('SADD', applied_key, delivery_id) == 0 then
    record('duplicate')
    return {'duplicate'}
  end
  redis.call('EXPIRE', applied_key, applied_ttl)
end

local mapping_exists = redis.call('EXISTS', mapping_key) == 1
if mapping_exists and source == 'webhook' then
  redis.call('HSET', mapping_key, 'last_webhook_update', updated_at)
end

local current = redis.call('HMGET', state_key, 'status', 'progress', 'result', 'error_message')
local cur_status, cur_progress = current[1], tonumber(current[2]) or 0
-- The provider ran the failed job again under the same id and it completed.
local retried = cur_status == 'failed' and status == 'completed' and failed_may_complete == '1'
if (cur_status == 'completed' or cur_status == 'failed') and not retried then
  record('terminal')
  return {'terminal'}
end

local new_progress = cur_progress
if status == 'completed' then
  new_progress = 100
elseif progress >= 0 and progress > cur_progress then
  new_progress = progress
end
local new_result = current[3]
if result ~= '' then new_result = result end
local new_error = current[4]
if error_message ~= '' then new_error = error_message end
if retried then
  -- the failure it reported is over: a completed job with an error would contradict itself
  new_error = false
  redis.call('HDEL', state_key, 'error_message')
end

if cur_status == status and new_progress == cur_progress
   and new_result == current[3] and new_error == current[4] then
  record('unchanged')
  return {'unchanged'}
end

local fields = {'status', status, 'progress', new_progress, 'updated_at', updated_at,
                'source', source, 'provider', provider}
if new_result then table.insert(fields, 'result'); table.insert(fields, new_result) end
if new_error then table.insert(fields, 'error_message'); table.insert(fields, new_error) end
if external_id ~= '' then
  table.insert(fields, 'external_job_id'); table.insert(fields, external_id)
elseif mapping_exists then
  external_id = redis.call('HGET', mapping_key, 'external_job_id') or ''
end
redis.call('HSET', state_key, unpack(fields))

if status == 'completed' or status == 'failed' then
  redis.call('ZREM', live_key, job_id)
  redis.call('HDEL', poll_failures_key, job_id, job_id .. ':first_404', job_id .. ':failing_since')
  -- What the consistency check samples: only jobs the provider can be asked about.
  if external_id ~= '' then
    redis.call('ZADD', finished_key, updated_at, job_id)
    redis.call('ZREMRANGEBYSCORE', finished_key, '-inf', '(' .. finished_cutoff)
    redis.call('ZREMRANGEBYRANK', finished_key, 0, -finished_keep - 1)
    redis.call('PEXPIRE', finished_key, finished_ttl_ms)
  end
elseif mapping_exists then
  redis.call('ZADD', live_key, updated_at, job_id)
end

-- `result` is JSON text we produced ourselves, so it is embedded as is, unless
-- it is too large for a pub/sub message (a Redis subscriber is disconnected once
-- 32 MB wait in its output buffer): then a marker says where it is.
local broadcast_result = new_result or 'null'
if new_result and #new_result > broadcast_max_result then
  broadcast_result = 'null,"result_omitted":true,"result_size":' .. #new_result
end
local message = '{"job_id":' .. cjson.encode(job_id)
  .. ',"external_job_id":' .. str(external_id)
  .. ',"status":' .. cjson.encode(status)
  .. ',"progress":' .. new_progress
  .. ',"result":' .. broadcast_result
  .. ',"error_message":' .. str(new_error)
  .. ',"provider":' .. cjson.encode(provider)
  .. ',"updated_at":' .. updated_at
  .. ',"source":' .. cjson.encode(source) .. '}'
redis.call('PUBLISH', progress_channel, message)
redis.call('PUBLISH', updates_channel, message)
record('applied')
return {'applied', message}
"""


class Outcome(enum.StrEnum):
    APPLIED = "applied"  # state changed and was broadcast
    UNCHANGED = "unchanged"  # nothing new in this observation
    TERMINAL = "terminal"  # the job had already finished; ignored
    DUPLICATE = "duplicate"  # this delivery was finished (or applied) before


@dataclass(frozen=True)
class ApplyResult:
    outcome: Outcome
    broadcast: dict[str, Any] | None = None


EVENTS_KEEP = 20  # per job: enough to tell a story, small enough to never matter
# A result whose JSON text is longer than this is broadcast as a marker (module
# docstring): status updates stay small for every subscriber of `job_updates`,
# while RunPod's and Stability's base64 outputs of several MB stay in job_state.
BROADCAST_MAX_RESULT_BYTES = 64 * 1024
# Per provider: the consistency check samples a few of these per run, so more
# finished jobs than this within its window add nothing but memory.
FINISHED_KEEP = 10_000


class StateStore:
    """Applies updates and reads state; one per process, sharing a connection pool."""

    def __init__(
        self,
        client: redis.Redis,
        applied_ttl_seconds: int,
        finished_window_seconds: int = 3600,
        finished_keep: int = FINISHED_KEEP,
        retried_under_same_id: frozenset[str] = frozenset(),
    ) -> None:
        """`retried_under_same_id`: the providers whose failed jobs may still complete
        (those with `Provider.retries_under_same_id`)."""
        self._redis = client
        self._failed_may_complete = retried_under_same_id
        self._applied_ttl = applied_ttl_seconds
        self._finished_window_ms = finished_window_seconds * 1000
        self._finished_keep = finished_keep
        self._apply = client.register_script(_APPLY_LUA)

    def apply(
        self,
        update: JobStateUpdate,
        delivery_id: str | None = None,
        journal_member: str | None = None,
    ) -> ApplyResult:
        """Apply one observation atomically; see the module docstring for the rules.

        `journal_member`: the journal record of the delivery this observation came
        from, finished in the same step (handoff.journal)."""
        update = validated(update)
        job_id = update.job_id
        reply = self._apply(
            keys=[
                keys.job_state(job_id),
                keys.job_mapping(job_id),
                keys.applied_deliveries(job_id),
                keys.live_jobs(update.provider),
                keys.POLL_FAILURES,
                keys.job_events(job_id),
                keys.finished_jobs(update.provider),
                keys.JOURNAL,
                keys.JOURNAL_MESSAGES,
            ],
            args=[
                job_id,
                update.status,
                -1 if update.progress is None else update.progress,
                result_json(update.result) or "",
                update.error_message or "",
                update.external_job_id or "",
                update.provider,
                update.source,
                update.updated_at,
                # Polls carry no delivery id: monotonic rules alone make them safe.
                (delivery_id or "") if update.source == SOURCE_WEBHOOK else "",
                self._applied_ttl,
                keys.progress_channel(job_id),
                keys.UPDATES_CHANNEL,
                EVENTS_KEEP,
                # finished jobs older than the consistency window are of no more use
                update.updated_at - self._finished_window_ms,
                self._finished_window_ms,
                self._finished_keep,
                update.provider_status or "",
                journal_member or "",
                "1" if update.provider in self._failed_may_complete else "",
                BROADCAST_MAX_RESULT_BYTES,
            ],
        )
        outcome = Outcome(_text(reply[0]))
        metrics.STATE_UPDATES.labels(
            source=update.source, status=update.status, outcome=outcome.value
        ).inc()
        broadcast = json.loads(reply[1]) if outcome is Outcome.APPLIED else None
        return ApplyResult(outcome, broadcast)

    def note_finished_copy(self, job_id: str, delivery_id: str, at: int) -> None:
        """Leave the trace of a copy of a delivery that arrived after the delivery was
        finished (a redelivery after a worker died between applying and acking, or a
        journal redrive that raced its original): the worker drops it unread, and the
        operator still sees it came, with the same outcome the apply script gives a
        delivery id it has applied before. Status and progress are unknown: the
        copy was not read."""
        event = json.dumps(
            {
                "at": at,
                "source": SOURCE_WEBHOOK,
                "delivery_id": delivery_id,
                "status": None,
                "provider_status": None,
                "progress": None,
                "outcome": Outcome.DUPLICATE.value,
            }
        )
        events_key = keys.job_events(job_id)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.lpush(events_key, event)
            pipe.ltrim(events_key, 0, EVENTS_KEEP - 1)
            pipe.expire(events_key, self._applied_ttl)
            pipe.execute()

    def get(self, job_id: str) -> dict[str, str]:
        return self._redis.hgetall(keys.job_state(job_id))

    def events(self, job_id: str, limit: int = EVENTS_KEEP) -> list[dict[str, Any]]:
        """The job's last observations, newest first."""
        return [json.loads(e) for e in self._redis.lrange(keys.job_events(job_id), 0, limit - 1)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""The one place job state is written: `apply(update)`.

Webhooks and orphan polls both end here, so ordering, duplicates and races are
solved once, inside one Lua script that Redis runs atomically:

- a delivery id already applied to the job changes nothing;
- a terminal status (completed, failed) is final: later or late-arriving
  observations are ignored;
- progress never goes down, and `completed` means 100;
- when anything changed, the merged state is written, the mapping is touched, and
  the update is published on `job_progress:{job_id}` and `job_updates`.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

import redis

from webhook_ingest import keys
from webhook_ingest.job_update import SOURCE_WEBHOOK, JobStateUpdate, result_json, validated

_APPLY_LUA = """
local state_key, mapping_key, applied_key, live_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local poll_failures_key = KEYS[5]
local job_id, status, progress, result = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local error_message, external_id, provider, source = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local updated_at, delivery_id, applied_ttl = ARGV[9], ARGV[10], tonumber(ARGV[11])
local progress_channel, updates_channel = ARGV[12], ARGV[13]

if delivery_id ~= '' then
  if redis.call('SADD', applied_key, delivery_id) == 0 then
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
if cur_status == 'completed' or cur_status == 'failed' then
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

if cur_status == status and new_progress == cur_progress
   and new_result == current[3] and new_error == current[4] then
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
  redis.call('HDEL', poll_failures_key, job_id, job_id .. ':first_404')
elseif mapping_exists then
  redis.call('ZADD', live_key, updated_at, job_id)
end

local function str(value)
  if value == nil or value == false or value == '' then return 'null' end
  return cjson.encode(value)
end
-- `result` is JSON text we produced ourselves, so it is embedded as is.
local message = '{"job_id":' .. cjson.encode(job_id)
  .. ',"external_job_id":' .. str(external_id)
  .. ',"status":' .. cjson.encode(status)
  .. ',"progress":' .. new_progress
  .. ',"result":' .. (new_result or 'null')
  .. ',"error_message":' .. str(new_error)
  .. ',"provider":' .. cjson.encode(provider)
  .. ',"updated_at":' .. updated_at
  .. ',"source":' .. cjson.encode(source) .. '}'
redis.call('PUBLISH', progress_channel, message)
redis.call('PUBLISH', updates_channel, message)
return {'applied', message}
"""


class Outcome(enum.StrEnum):
    APPLIED = "applied"  # state changed and was broadcast
    UNCHANGED = "unchanged"  # nothing new in this observation
    TERMINAL = "terminal"  # the job had already finished; ignored
    DUPLICATE = "duplicate"  # this delivery was applied before


@dataclass(frozen=True)
class ApplyResult:
    outcome: Outcome
    broadcast: dict[str, Any] | None = None


class StateStore:
    """Applies updates and reads state; one per process, sharing a connection pool."""

    def __init__(self, client: redis.Redis, applied_ttl_seconds: int) -> None:
        self._redis = client
        self._applied_ttl = applied_ttl_seconds
        self._apply = client.register_script(_APPLY_LUA)

    def apply(self, update: JobStateUpdate, delivery_id: str | None = None) -> ApplyResult:
        """Apply one observation atomically; see the module docstring for the rules."""
        update = validated(update)
        job_id = update.job_id
        reply = self._apply(
            keys=[
                keys.job_state(job_id),
                keys.job_mapping(job_id),
                keys.applied_deliveries(job_id),
                keys.live_jobs(update.provider),
                keys.POLL_FAILURES,
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
            ],
        )
        outcome = Outcome(_text(reply[0]))
        broadcast = json.loads(reply[1]) if outcome is Outcome.APPLIED else None
        return ApplyResult(outcome, broadcast)

    def get(self, job_id: str) -> dict[str, str]:
        return self._redis.hgetall(keys.job_state(job_id))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

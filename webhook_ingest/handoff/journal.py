"""The delivery journal: what a 2xx rests on, instead of the broker's good behaviour.

The receiver writes a record with the delivery's claim, in the same atomic step
(handoff.single_script, handoff.journal_then_publish): the message the worker
needs, indexed by when the delivery is due to be finished. The worker removes
the record in the same atomic step that records the outcome (applied or any
other answer of StateStore.apply, ignored, parked as a dead letter), and pushes
the due time forward whenever it schedules a retry. Beat redrives what is
overdue (workers.tasks.redrive_journal): publishes the message again, at most
once per record per REDRIVE_AFTER, in budgets.

Why: kombu's Redis transport loses a message popped by a worker that dies
before recording it in `unacked` (kombu#305), an operator may purge a queue,
a receiver may die between claim and publish. A record lives only while its
delivery is unfinished, so the journal costs memory only for what is in flight.

A redriven copy of a delivery that was in fact finished is a no-op: the worker
finds no record and acknowledges it (`is_open`); one that was applied is also
caught by the job's applied-delivery set.
"""

from __future__ import annotations

import json
from dataclasses import replace

import redis

from webhook_ingest.clock import now_ms
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.state import keys

# KEYS: journal zset, messages hash. ARGV: now (ms), budget, next due (ms).
# Overdue records move one redrive period ahead in the same step, so two beats
# (or a tick that overlaps the next) never redrive the same record twice.
_TAKE_OVERDUE_LUA = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local messages = {}
for _, member in ipairs(members) do
  local message = redis.call('HGET', KEYS[2], member)
  if message then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[3], member)
    table.insert(messages, message)
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
return messages
"""


class Journal:
    def __init__(self, client: redis.Redis, redrive_after_seconds: int) -> None:
        self._redis = client
        self.redrive_after_ms = redrive_after_seconds * 1000
        self._take_overdue = client.register_script(_TAKE_OVERDUE_LUA)

    # -- what the receiver's scripts write ----------------------------------------

    def record(self, delivery: Delivery) -> tuple[str, int, bytes]:
        """(member, due time in ms, message) for a script that journals `delivery`."""
        journaled = replace(delivery, journaled=True)
        return (
            delivery.journal_member,
            now_ms() + self.redrive_after_ms,
            # UTF-8: an escaped non-ASCII body would take three to six times its size.
            # Bytes, which Redis takes as they are: text would be encoded into one
            # more copy of a body of up to MAX_BODY_BYTES_<PROVIDER> during the call.
            json.dumps(journaled.to_message(), ensure_ascii=False).encode(),
        )

    def open(self, delivery: Delivery) -> None:
        """Journal `delivery` on its own (a dead letter's replay: it has no claim)."""
        member, due, message = self.record(delivery)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(keys.JOURNAL, {member: due})
            pipe.hset(keys.JOURNAL_MESSAGES, member, message)
            pipe.execute()

    def forget(self, delivery: Delivery) -> None:
        """Drop a record nobody was told about (its publish failed)."""
        with self._redis.pipeline(transaction=True) as pipe:
            finish_in(pipe, delivery)
            pipe.execute()

    # -- the worker -----------------------------------------------------------------

    def is_open(self, delivery: Delivery) -> bool:
        """Still unfinished? False once any copy of it recorded an outcome."""
        return bool(self._redis.hexists(keys.JOURNAL_MESSAGES, delivery.journal_member))

    def postpone(self, delivery: Delivery, seconds: float) -> None:
        """A retry is scheduled `seconds` from now: not overdue until it had its chance."""
        due = now_ms() + int(seconds * 1000) + self.redrive_after_ms
        self._redis.zadd(keys.JOURNAL, {delivery.journal_member: due}, xx=True)

    # -- redrive (beat) ---------------------------------------------------------------

    def take_overdue(self, budget: int, now: int | None = None) -> list[Delivery]:
        """Overdue deliveries, at most `budget`, each due again one period later."""
        now = now_ms() if now is None else now
        messages = self._take_overdue(
            keys=[keys.JOURNAL, keys.JOURNAL_MESSAGES],
            args=[now, budget, now + self.redrive_after_ms],
        )
        return [Delivery.from_message(json.loads(message)) for message in messages]


def finish_in(pipe: redis.client.Pipeline, delivery: Delivery) -> None:
    """Queue the removal of `delivery`'s record on a MULTI pipeline that records
    its outcome, so both happen together or not at all."""
    if delivery.journaled:
        pipe.zrem(keys.JOURNAL, delivery.journal_member)
        pipe.hdel(keys.JOURNAL_MESSAGES, delivery.journal_member)

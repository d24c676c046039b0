"""Deliveries that could not be applied, kept where an operator can see them.

A dead letter holds the delivery as it arrived (safe headers and raw body, the
same message a worker received), the reason, the last error and the attempts,
for `DEAD_LETTER_TTL_SECONDS`. Replaying re-enqueues that message through the
normal path; the state function's per-job delivery ids keep a replay idempotent.

Records expire by themselves; the index (a zset by parked time) does not, so
every walk over it drops the ids whose record is gone.

Each provider keeps at most `DEAD_LETTER_MAX_PER_PROVIDER` letters and
`DEAD_LETTER_MAX_BYTES_PER_PROVIDER` bytes (what a letter stores): parking past
either drops that provider's oldest in the same transaction as the park,
counted in `webhook_dead_letters_dropped_total{provider}`. The letter just
parked is always kept, even alone over the byte cap. Letters parked before the
caps existed are not counted; they expire by their TTL.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import redis
from celery import Celery

from webhook_ingest.clock import now_ms
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.handoff.journal import Journal, finish_in
from webhook_ingest.handoff.publish import EnqueueFailed, enqueue
from webhook_ingest.observability.metrics import DEAD_LETTERS_DROPPED
from webhook_ingest.state import keys

log = logging.getLogger(__name__)

# Everything but the message: enough to list and filter without loading bodies.
SUMMARY_FIELDS = (
    "id",
    "reason",
    "error",
    "attempts",
    "parked_at",
    "provider",
    "delivery_id",
    "job_id",
)
WALK_CHUNK = 200

# KEYS: the index, the provider's index, sizes, total. ARGV: letter id, parked at,
# its bytes, expired up to (ms), max count, max bytes, the records' key prefix.
# Counts the new letter in, forgets the provider's expired ones, then drops the
# oldest (never the new one) until both caps hold; returns how many it dropped.
_CAP_LUA = """
local id, size = ARGV[1], tonumber(ARGV[3])
local max_count, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[2], id)
redis.call('HSET', KEYS[3], id, size)
local total = redis.call('INCRBY', KEYS[4], size)
local function forget(old)
  local old_size = tonumber(redis.call('HGET', KEYS[3], old) or '0')
  redis.call('HDEL', KEYS[3], old)
  redis.call('ZREM', KEYS[2], old)
  total = redis.call('DECRBY', KEYS[4], old_size)
end
for _, old in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])) do
  forget(old)
end
local dropped = 0
while redis.call('ZCARD', KEYS[2]) > 1
    and (redis.call('ZCARD', KEYS[2]) > max_count or total > max_bytes) do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 1)
  local victim = oldest[1]
  if victim == id then victim = oldest[2] end
  forget(victim)
  redis.call('DEL', ARGV[7] .. victim)
  redis.call('ZREM', KEYS[1], victim)
  dropped = dropped + 1
end
return dropped
"""

# KEYS: the provider's index, sizes, total. ARGV: letter id. A letter leaves the
# provider's accounting (replayed or purged).
_UNCOUNT_LUA = """
local size = redis.call('HGET', KEYS[2], ARGV[1])
if size then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('DECRBY', KEYS[3], size)
end
redis.call('ZREM', KEYS[1], ARGV[1])
return 0
"""


class UnknownDeadLetter(KeyError):
    """No dead letter with this id (never parked, expired, purged or replayed)."""


class DeadLetters:
    def __init__(
        self,
        client: redis.Redis,
        ttl_seconds: int,
        journal: Journal,
        max_per_provider: int = 10_000,
        max_bytes_per_provider: int = 256 * 1024 * 1024,
    ) -> None:
        self._redis = client
        self._ttl = ttl_seconds
        self._journal = journal
        self._max_count = max_per_provider
        self._max_bytes = max_bytes_per_provider
        self._cap = client.register_script(_CAP_LUA)
        self._uncount = client.register_script(_UNCOUNT_LUA)

    def park(self, delivery: Delivery, reason: str, error: str, attempts: int) -> str:
        letter_id = uuid.uuid4().hex
        parked_at = now_ms()
        record = {
            "id": letter_id,
            "reason": reason,
            "error": error[:2000],
            "attempts": attempts,
            "parked_at": parked_at,
            "provider": delivery.provider,
            "delivery_id": delivery.delivery_id,
            "job_id": delivery.job_id or "",
            "message": json.dumps(delivery.to_message(), ensure_ascii=False),
        }
        size = sum(
            len(str(name).encode()) + len(str(value).encode()) for name, value in record.items()
        )
        expired_before = parked_at - self._ttl * 1000
        provider = delivery.provider
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.dead_letter(letter_id), mapping=record)
            pipe.expire(keys.dead_letter(letter_id), self._ttl)
            pipe.zadd(keys.DEAD_LETTERS, {letter_id: parked_at})
            # the index forgets what the records forgot
            pipe.zremrangebyscore(keys.DEAD_LETTERS, "-inf", expired_before)
            # the provider's caps, in the same transaction as the park
            self._cap(
                keys=[
                    keys.DEAD_LETTERS,
                    keys.dead_letters_of(provider),
                    keys.dead_letter_sizes(provider),
                    keys.dead_letter_bytes(provider),
                ],
                args=[
                    letter_id,
                    parked_at,
                    size,
                    expired_before,
                    self._max_count,
                    self._max_bytes,
                    keys.dead_letter(""),
                ],
                client=pipe,
            )
            # parked is an outcome: the delivery's journal record ends with it
            finish_in(pipe, delivery)
            dropped = pipe.execute()[4]
        if dropped:
            DEAD_LETTERS_DROPPED.labels(provider).inc(dropped)
            log.warning(
                "dropped the %d oldest dead letters of %s: over its cap",
                dropped,
                provider,
                extra={"provider": provider},
            )
        return letter_id

    # -- reading ---------------------------------------------------------------------

    def list(
        self,
        limit: int = 50,
        provider: str | None = None,
        reason: str | None = None,
        with_message: bool = True,
    ) -> list[dict[str, Any]]:
        """The newest `limit` letters matching the filters."""
        letters = []
        for letter in self._walk(newest_first=True, with_message=with_message):
            if _matches(letter, provider, reason):
                letters.append(letter)
                if len(letters) >= limit:
                    break
        return letters

    def get(self, letter_id: str) -> dict[str, Any] | None:
        return _decoded(self._redis.hgetall(keys.dead_letter(letter_id)))

    def delivery(self, letter_id: str) -> Delivery | None:
        letter = self.get(letter_id)
        return Delivery.from_message(letter["message"]) if letter else None

    def select(
        self,
        provider: str | None = None,
        reason: str | None = None,
        parked_before: int | None = None,
    ) -> list[str]:
        """Ids of the matching letters, oldest first; `parked_before` is epoch ms."""
        return [
            letter["id"]
            for letter in self._walk(newest_first=False, parked_before=parked_before)
            if _matches(letter, provider, reason)
        ]

    def count(self) -> int:
        return self._redis.zcard(keys.DEAD_LETTERS)

    # -- acting ----------------------------------------------------------------------

    def replay(self, letter_id: str, celery_app: Celery) -> dict[str, Any]:
        """Re-enqueue the letter's delivery as it arrived; remove it once the broker has it.

        Same task, same delivery id: a delivery that was applied meanwhile ends as a
        duplicate. Raises UnknownDeadLetter, or EnqueueFailed (the letter stays).
        """
        letter = self.get(letter_id)
        if letter is None:
            self._forget(letter_id)
            raise UnknownDeadLetter(letter_id)
        delivery = dataclasses.replace(
            Delivery.from_message(letter["message"]), replayed_at=now_ms(), journaled=True
        )
        # Journaled before it is published, like a delivery the receiver takes: a
        # worker that loses the message does not lose the replay with it.
        self._journal.open(delivery)
        try:
            enqueue(celery_app, delivery)
        except EnqueueFailed:
            self._journal.forget(delivery)  # nobody else knows of this record: the letter stays
            raise
        # Should this fail, the letter stays and a second replay is a harmless duplicate.
        self._delete(letter_id)
        log.info("dead letter %s replayed", letter_id, extra=_log_context(letter))
        return letter

    def replay_matching(
        self, celery_app: Celery, provider: str | None = None, reason: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Replay the matching letters oldest first, yielding each once the broker has it.

        Stops with EnqueueFailed at the first the broker refuses; the rest stay.
        """
        for letter_id in self.select(provider, reason):
            try:
                yield self.replay(letter_id, celery_app)
            except UnknownDeadLetter:
                continue  # purged, replayed or expired since the selection

    def purge(self, letter_id: str) -> dict[str, Any] | None:
        """Remove one letter; the letter removed, or None if there was none."""
        letter = self._delete(letter_id)
        if letter is not None:
            log.info("dead letter %s purged", letter_id, extra=_log_context(letter))
        return letter

    def purge_matching(
        self,
        provider: str | None = None,
        reason: str | None = None,
        parked_before: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Purge the matching letters oldest first, yielding each one removed."""
        for letter_id in self.select(provider, reason, parked_before):
            letter = self.purge(letter_id)
            if letter is not None:
                yield letter

    # -- the index -------------------------------------------------------------------

    def _walk(
        self, newest_first: bool, parked_before: int | None = None, with_message: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Letters in index order, read a chunk per round trip; ghosts leave the index.

        Ids are read by score, not position, so removals during the walk (by the
        caller or by others) neither skip nor repeat a letter.
        """
        fields = SUMMARY_FIELDS + (("message",) if with_message else ())
        lowest, highest = "-inf", "+inf" if parked_before is None else parked_before
        seen_at_edge: set[str] = set()
        while True:
            # The moving edge is inclusive (letters can share a millisecond): ask for as
            # many more as were already seen at it, so a tie never ends the walk early.
            span = {"start": 0, "num": WALK_CHUNK + len(seen_at_edge), "withscores": True}
            if newest_first:
                page = self._redis.zrevrangebyscore(keys.DEAD_LETTERS, highest, lowest, **span)
            else:
                page = self._redis.zrangebyscore(keys.DEAD_LETTERS, lowest, highest, **span)
            page = [entry for entry in page if entry[0] not in seen_at_edge]
            if not page:
                return
            with self._redis.pipeline(transaction=False) as pipe:
                for letter_id, _ in page:
                    pipe.hmget(keys.dead_letter(letter_id), fields)
                records = pipe.execute()
            letters = [_decoded(dict(zip(fields, values, strict=True))) for values in records]
            # Before yielding: a caller that stops early still leaves a cleaner index.
            ghosts = [entry[0] for entry, letter in zip(page, letters, strict=True) if not letter]
            if ghosts:
                self._forget(*ghosts)
            yield from (letter for letter in letters if letter is not None)
            edge = page[-1][1]
            if edge != (highest if newest_first else lowest):
                seen_at_edge = set()
            seen_at_edge.update(letter_id for letter_id, score in page if score == edge)
            if newest_first:
                highest = edge
            else:
                lowest = edge

    def _delete(self, letter_id: str) -> dict[str, Any] | None:
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.dead_letter(letter_id))
            pipe.delete(keys.dead_letter(letter_id))
            pipe.zrem(keys.DEAD_LETTERS, letter_id)
            record, _, _ = pipe.execute()
        letter = _decoded(record)
        if letter is not None:
            # out of its provider's caps (should this fail, the next park's expiry
            # sweep or a cap drop forgets it)
            provider = letter["provider"]
            self._uncount(
                keys=[
                    keys.dead_letters_of(provider),
                    keys.dead_letter_sizes(provider),
                    keys.dead_letter_bytes(provider),
                ],
                args=[letter_id],
            )
        return letter

    def _forget(self, *letter_ids: str) -> None:
        self._redis.zrem(keys.DEAD_LETTERS, *letter_ids)


def _matches(letter: dict[str, Any], provider: str | None, reason: str | None) -> bool:
    return (provider is None or letter["provider"] == provider) and (
        reason is None or letter["reason"] == reason
    )


def _decoded(record: dict[str, Any]) -> dict[str, Any] | None:
    if not record or record.get("id") is None:
        return None
    # In a stable order (a hash has none), for people reading the output.
    letter = {name: record[name] for name in (*SUMMARY_FIELDS, "message") if name in record}
    letter["attempts"] = int(letter["attempts"])
    letter["parked_at"] = int(letter["parked_at"])
    if letter.get("message") is not None:
        letter["message"] = json.loads(letter["message"])
    return letter


def _log_context(letter: dict[str, Any]) -> dict[str, Any]:
    return {
        "provider": letter["provider"],
        "delivery_id": letter["delivery_id"],
        "job_id": letter["job_id"] or None,
    }

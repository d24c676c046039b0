"""Receiver-side de-duplication by delivery id (`webhook-id`), written together
with the delivery's journal record.

A claim says `enqueued` from the moment the delivery is journaled: the journal,
not the broker, is what a 2xx rests on (handoff.journal), so a provider's retry
of a journaled delivery is answered as a duplicate at once, whether or not the
first attempt's publish has finished (or was cut short by a crash: beat
redrives the record).

`pending` claims were written by versions before the journal while they
published; one left by such a receiver still answers 409 until it expires
(PENDING_TTL_SECONDS).
"""

from __future__ import annotations

import enum

import redis

from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.state import keys

PENDING = "pending"
ENQUEUED = "enqueued"
PENDING_TTL_SECONDS = 30

# The claim and the journal record, or neither: the start of both hand-off
# scripts. KEYS: claim, journal zset, journal messages.
# ARGV: claim TTL, ENQUEUED, journal member, due (ms), journal message.
CLAIM_AND_JOURNAL_LUA = """
local previous = redis.call('GET', KEYS[1])
if previous then
  if previous == ARGV[2] then return 'duplicate' end
  return 'in_flight'
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[5])
"""


class Claim(enum.StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"
    IN_FLIGHT = "in_flight"


OUTCOMES = {
    "new": Claim.NEW,
    "enqueued": Claim.NEW,
    "duplicate": Claim.DUPLICATE,
    "in_flight": Claim.IN_FLIGHT,
}


def claim_keys(delivery: Delivery) -> list[str]:
    return [
        keys.delivery_claim(delivery.provider, delivery.delivery_id, delivery.job_id),
        keys.JOURNAL,
        keys.JOURNAL_MESSAGES,
    ]


def claim_args(ttl_seconds: int, record: tuple[str, int, str]) -> list:
    member, due, message = record
    return [ttl_seconds, ENQUEUED, member, due, message]


class DeliveryClaims:
    """Claim + journal as one script, for hand-offs that publish afterwards."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.ttl_seconds = ttl_seconds
        self._claim = client.register_script(CLAIM_AND_JOURNAL_LUA + "\nreturn 'new'\n")

    def claim(self, delivery: Delivery, record: tuple[str, int, str]) -> Claim:
        """`record`: the delivery's journal record (handoff.journal.Journal.record)."""
        reply = self._claim(keys=claim_keys(delivery), args=claim_args(self.ttl_seconds, record))
        return OUTCOMES[reply if isinstance(reply, str) else reply.decode()]

"""Receiver-side de-duplication by delivery id (`webhook-id`), written together
with the delivery's journal record.

A delivery is remembered from the moment it is journaled: the journal, not the
broker, is what a 2xx rests on (handoff.journal), so a provider's retry of a
journaled delivery is answered as a duplicate at once, whether or not the first
attempt's publish has finished (or was cut short by a crash: beat redrives the
record). It is remembered as a digest in its provider's time-bucketed set, for
that provider's retry window (handoff.seen).

Claim keys of earlier versions (a key per id, `keys.delivery_claim`) are still
read, so an upgrade forgets nothing they acknowledged: `enqueued` is a
duplicate, and `pending` — written by versions before the journal while they
published — still answers 409 until it expires (PENDING_TTL_SECONDS), which is
the only reason `in_flight` remains. Reading them costs one GET of a missing key
per delivery; it can go once DELIVERY_DEDUP_TTL_SECONDS has passed since every
receiver runs this version.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

import redis
from limits import parse

from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.handoff.seen import SeenDeliveries
from webhook_ingest.state import keys
from webhook_ingest.state.replica_acks import ReplicaAcks

# The values of legacy claim keys (keys.delivery_claim)
PENDING = "pending"
ENQUEUED = "enqueued"
PENDING_TTL_SECONDS = 30

# The claim and the journal record, or neither: the start of both hand-off
# scripts. KEYS: the provider's seen-delivery buckets (current, next, the two
# before: handoff.seen), the legacy claim key, journal zset, journal messages,
# rate counter. ARGV: the delivery's digest, when the current bucket expires (unix s),
# journal member, due (ms), journal message, rate limit (0: none), rate window (s).
# The rate counts new deliveries only: a provider's retry of one already
# acknowledged is a duplicate however busy the window, and a refused one
# writes nothing but the counter. A duplicate writes nothing at all, so a replay
# loop cannot keep an id (or its bucket) alive.
CLAIM_AND_JOURNAL_LUA = """
for i = 1, 4 do
  if redis.call('SISMEMBER', KEYS[i], ARGV[1]) == 1 then return 'duplicate' end
end
local legacy = redis.call('GET', KEYS[5])
if legacy then
  if legacy == 'pending' then return 'in_flight' end
  return 'duplicate'
end
if ARGV[6] ~= '0' then
  local used = redis.call('INCR', KEYS[8])
  if used == 1 then redis.call('EXPIRE', KEYS[8], ARGV[7]) end
  if used > tonumber(ARGV[6]) then
    return 'rate_limited:' .. redis.call('TTL', KEYS[8])
  end
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[6], ARGV[4], ARGV[3])
redis.call('HSET', KEYS[7], ARGV[3], ARGV[5])
"""
# A script that goes on after this one numbers its own KEYS from 9 (single_script).


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


class RateLimited(Exception):
    """Over RATE_LIMIT: nothing was claimed or journaled; answer 429."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"rate limited, retry after {retry_after}s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class RateLimit:
    """RATE_LIMIT: at most `amount` new verified deliveries per provider and
    client address in a fixed window of `seconds` (starting with its first)."""

    amount: int
    seconds: int

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        item = parse(text)  # "100/second", "1000 per minute" (the `limits` notation)
        return cls(item.amount, item.get_expiry())


def outcome(reply: str | bytes) -> Claim:
    """The claim scripts' reply as a Claim; RateLimited for a refusal."""
    text = reply if isinstance(reply, str) else reply.decode()
    if text.startswith("rate_limited:"):
        raise RateLimited(max(1, int(text.removeprefix("rate_limited:"))))
    return OUTCOMES[text]


def claim_call(
    seen: SeenDeliveries,
    delivery: Delivery,
    client: str,
    record: tuple[str, int, bytes],
    rate: RateLimit | None,
    now: float | None = None,
) -> tuple[list, list]:
    """(KEYS, ARGV) of CLAIM_AND_JOURNAL_LUA for `delivery`, journaled as `record`
    (handoff.journal.Journal.record), from the sender's address `client`; `now`:
    this receiver's clock (Unix seconds), which picks the buckets."""
    now = time.time() if now is None else now
    member, due, message = record
    limit, window = (rate.amount, rate.seconds) if rate else (0, 0)
    claim_keys = [
        *seen.claim_keys(delivery, now),
        keys.delivery_claim(delivery.provider, delivery.delivery_id, delivery.job_id),
        keys.JOURNAL,
        keys.JOURNAL_MESSAGES,
        keys.delivery_rate(delivery.provider, client),
    ]
    args = [*seen.claim_args(delivery, now), member, due, message, limit, window]
    return claim_keys, args


class DeliveryClaims:
    """Claim + journal as one script, for hand-offs that publish afterwards."""

    def __init__(
        self, client: redis.Redis, seen: SeenDeliveries, rate: RateLimit | None = None
    ) -> None:
        self.seen = seen
        self.rate = rate
        self._claim = client.register_script(CLAIM_AND_JOURNAL_LUA + "\nreturn 'new'\n")

    def claim(
        self,
        delivery: Delivery,
        record: tuple[str, int, bytes],
        client: str = "",
        now: float | None = None,
        acks: ReplicaAcks | None = None,
    ) -> Claim:
        """`record`: the delivery's journal record (handoff.journal.Journal.record);
        `client`: the sender's address, for RATE_LIMIT. Raises RateLimited.
        With `acks` (REDIS_MIN_REPLICA_ACKS) the claim is followed by a WAIT on the
        same connection; see `claim_acked`."""
        return self.claim_acked(delivery, record, client, now, acks)[0]

    def claim_acked(
        self,
        delivery: Delivery,
        record: tuple[str, int, bytes],
        client: str = "",
        now: float | None = None,
        acks: ReplicaAcks | None = None,
    ) -> tuple[Claim, int | None]:
        """The claim and how many replicas acknowledged it (None: nobody asked);
        the caller passes the count to `acks.require` when it is time to answer."""
        claim_keys, args = claim_call(self.seen, delivery, client, record, self.rate, now)
        if acks is None:
            return outcome(self._claim(keys=claim_keys, args=args)), None
        reply, acked = acks.run_script(self._claim, claim_keys, args)
        return outcome(reply), acked

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
from dataclasses import dataclass

import redis
from limits import parse

from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.state import keys

PENDING = "pending"
ENQUEUED = "enqueued"
PENDING_TTL_SECONDS = 30

# The claim and the journal record, or neither: the start of both hand-off
# scripts. KEYS: claim, journal zset, journal messages, rate counter.
# ARGV: claim TTL, ENQUEUED, journal member, due (ms), journal message,
# rate limit (0: none), rate window (s).
# The rate counts new deliveries only: a provider's retry of one already
# acknowledged is a duplicate however busy the window, and a refused one
# writes nothing but the counter.
CLAIM_AND_JOURNAL_LUA = """
local previous = redis.call('GET', KEYS[1])
if previous then
  if previous == ARGV[2] then return 'duplicate' end
  return 'in_flight'
end
if ARGV[6] ~= '0' then
  local used = redis.call('INCR', KEYS[4])
  if used == 1 then redis.call('EXPIRE', KEYS[4], ARGV[7]) end
  if used > tonumber(ARGV[6]) then
    return 'rate_limited:' .. redis.call('TTL', KEYS[4])
  end
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


def claim_keys(delivery: Delivery, client: str) -> list[str]:
    return [
        keys.delivery_claim(delivery.provider, delivery.delivery_id, delivery.job_id),
        keys.JOURNAL,
        keys.JOURNAL_MESSAGES,
        keys.delivery_rate(delivery.provider, client),
    ]


def claim_args(ttl_seconds: int, record: tuple[str, int, bytes], rate: RateLimit | None) -> list:
    member, due, message = record
    limit, window = (rate.amount, rate.seconds) if rate else (0, 0)
    return [ttl_seconds, ENQUEUED, member, due, message, limit, window]


class DeliveryClaims:
    """Claim + journal as one script, for hand-offs that publish afterwards."""

    def __init__(
        self, client: redis.Redis, ttl_seconds: int, rate: RateLimit | None = None
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.rate = rate
        self._claim = client.register_script(CLAIM_AND_JOURNAL_LUA + "\nreturn 'new'\n")

    def claim(self, delivery: Delivery, record: tuple[str, int, bytes], client: str = "") -> Claim:
        """`record`: the delivery's journal record (handoff.journal.Journal.record);
        `client`: the sender's address, for RATE_LIMIT. Raises RateLimited."""
        reply = self._claim(
            keys=claim_keys(delivery, client),
            args=claim_args(self.ttl_seconds, record, self.rate),
        )
        return outcome(reply)

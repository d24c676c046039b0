"""Which deliveries the receiver has seen: per provider, for that provider's retry window.

A delivery is remembered by a 12-byte digest in a time-bucketed Redis set per
provider (`keys.seen_deliveries`), not by a key of its own: a key per id cost
~190-200 B (key name, value, TTL entry); a set member of 12 bytes costs 73-85 B
as bench/growth.py measures it: the 24-byte dict entry, a 16-byte allocation
(12 bytes plus sds header and NUL fit Redis's 16-byte size class exactly; a
longer digest would take the 24-byte class), and its share of the hash table,
which doubles as the set grows.

Buckets are half a window long. The claim script checks the current bucket and
the two before it (and the next one: see `claim_keys`) and adds to the current
one; a bucket expires once it is no longer among the three checked. So an id is
remembered for at least a window (added at the very end of a bucket, it is still
checked two bucket lengths later) and at most one and a half: a provider's ids
cost on average 1.25 windows of its traffic, at most 1.5. (One bucket per window
would check one set fewer but hold up to two windows.)

What is hashed is "{job id of the URL or ''}/{delivery id}" — the claim stays per
(provider, job of the URL, delivery id), so a captured body posted to another
job's URL cannot shadow the real one (issue 14); job ids have no `/`, so the two
parts never run into each other. blake2b, 96 bits: with N ids held for one
provider, the chance that any two share a digest is about N²/2^97 — for
N = 39.4 million (1.5 × 73 h of OpenAI deliveries at 100/s) that is 1e-14 per
window, and the chance that a given new delivery is wrongly taken for a
duplicate is N/2^96 = 5e-22. A collision would answer a new delivery
`duplicate`; at these odds that is not a risk worth a byte more.

Forgetting an id after its window is harmless: a provider does not send it
again, and a replay that gets through after it is applied under the state's
monotonic rules (a terminal job stays terminal, progress never goes down), so
re-applying an observation changes nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping

from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.state import keys

DIGEST_BYTES = 12
BUCKETS_CHECKED = 3  # the current bucket and the two before it: a window and a half at most


def digest(delivery: Delivery) -> bytes:
    text = f"{delivery.job_id or ''}/{delivery.delivery_id}"
    return hashlib.blake2b(text.encode(), digest_size=DIGEST_BYTES).digest()


class SeenDeliveries:
    """Each provider's window (seconds; Provider.delivery_dedup_seconds), and the
    keys and arguments the claim script needs to remember a delivery for it."""

    def __init__(self, windows: Mapping[str, int], default_seconds: int) -> None:
        self.windows = dict(windows)
        self.default_seconds = default_seconds

    @classmethod
    def from_providers(cls, providers: Mapping, default_seconds: int) -> SeenDeliveries:
        return cls(
            {name: p.delivery_dedup_seconds for name, p in providers.items()}, default_seconds
        )

    def window(self, provider: str) -> int:
        return self.windows.get(provider, self.default_seconds)

    def bucket_seconds(self, provider: str) -> int:
        # at least 1 s, and never rounded down: an id is kept for at least its window
        return max(1, -(-self.window(provider) // 2))

    def claim_keys(self, delivery: Delivery, now: float | None = None) -> list[str]:
        """The buckets to check, the current one (where a new delivery goes) first.

        The next one too: bucket numbers come from each receiver's own clock, and
        one a little ahead may already have put the first attempt there when a
        retry reaches a receiver whose clock is still in the bucket before."""
        length = self.bucket_seconds(delivery.provider)
        current = int((time.time() if now is None else now) // length)
        checked = [current, current + 1, *(current - n for n in range(1, BUCKETS_CHECKED))]
        return [keys.seen_deliveries(delivery.provider, bucket) for bucket in checked]

    def claim_args(self, delivery: Delivery, now: float | None = None) -> list:
        """[digest, when the current bucket expires (unix seconds)]."""
        length = self.bucket_seconds(delivery.provider)
        current = int((time.time() if now is None else now) // length)
        # the bucket is checked until the end of bucket current + BUCKETS_CHECKED - 1
        return [digest(delivery), (current + BUCKETS_CHECKED) * length]

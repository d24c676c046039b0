"""The receiver's limit on requests that proved nothing (README "Security").

Two budgets, so that a stranger can spend only their own:

- `RATE_LIMIT` counts new *verified* deliveries per provider and client
  address. It is counted inside the hand-off's claim script (handoff.claims),
  so a delivery stays one Redis round trip, and only a sender holding the
  provider's secret can spend it.
- `UNVERIFIED_RATE_LIMIT` (here) counts refusals before or at verification
  (unknown provider, address not allowed, bad job id, body too large or too
  slow, signature wrong) per client address, in the process's memory
  (web.client_buckets): no Redis work for traffic that proved nothing. Over it,
  the refusal is a 429 with `Retry-After` instead of its 4xx, and its log line
  is folded into one summary a second per process, so a flood of forgeries
  cannot flood the logs either. A verified delivery never consults it: the
  same address may carry a provider and an attacker (every client is the
  proxy's address with TRUSTED_PROXY_COUNT=0).
"""

from __future__ import annotations

import logging
import threading
import time

from webhook_ingest.web.client_buckets import ClientBuckets

log = logging.getLogger(__name__)


class UnverifiedLimit:
    def __init__(self, rate: str, summary_every_seconds: float = 1.0) -> None:
        self.buckets = ClientBuckets(rate)
        self._summary_every = summary_every_seconds
        self._lock = threading.Lock()
        self._folded = 0
        self._last_summary = 0.0

    def charge(self, client: str) -> int:
        """Spends one of `client`'s tokens for a refusal; 0 when it had one, else
        the seconds until it will (the refusal becomes a 429)."""
        return self.buckets.spend(client)

    def fold(self, provider: str, client: str) -> None:
        """Counts a refusal over the limit; logs a summary at most once a period."""
        with self._lock:
            self._folded += 1
            now = time.monotonic()
            if now - self._last_summary < self._summary_every:
                return
            folded, self._folded, self._last_summary = self._folded, 0, now
        log.warning(
            "unverified requests over UNVERIFIED_RATE_LIMIT: %d refused with 429 since the "
            "last summary (the latest from %s to %s)",
            folded,
            client,
            provider,
            extra={"provider": provider, "outcome": "unverified_rate_limited"},
        )

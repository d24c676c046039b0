"""Per-client token buckets kept in the process's memory, for traffic that has
proved nothing: requests that failed verification, wrong operator tokens.

In memory on purpose. Such traffic must cost the service no Redis round trip
(a shared counter would let a stranger turn each forged request into Redis
work, and spend a budget that authentic deliveries need); the price is that
each receiver process keeps its own buckets, so a client gets the rate once
per process (WEB_CONCURRENCY of them per host).

Bounded: at most `max_clients` addresses are tracked, the least recently seen
dropped first, so a sender spread over many addresses (an IPv6 /64 holds 2**64)
cannot grow the map; a dropped client starts again with a full bucket.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from limits import parse

# About 100 bytes per entry: ~1 MB per process at the bound.
MAX_CLIENTS = 10_000


def per_second(rate: str) -> tuple[float, float]:
    """("10/second" → capacity 10, refill 10 per second) from a `limits` rate string."""
    item = parse(rate)
    return float(item.amount), item.amount / item.get_expiry()


class ClientBuckets:
    def __init__(
        self,
        rate: str,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity, self.refill = per_second(rate)
        self.max_clients = max_clients
        self._clock = clock
        self._tokens: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _level(self, client: str, now: float) -> float:
        tokens, at = self._tokens.get(client, (self.capacity, now))
        return min(self.capacity, tokens + (now - at) * self.refill)

    def _seconds_to_a_token(self, level: float) -> int:
        """0 at a level of a whole token, else the whole seconds until there is one."""
        return 0 if level >= 1 else max(1, math.ceil((1 - level) / self.refill))

    def wait(self, client: str) -> int:
        """Seconds until `client` has a token (0: it has one now); spends nothing."""
        with self._lock:
            level = self._level(client, self._clock())
        return self._seconds_to_a_token(level)

    def spend(self, client: str) -> int:
        """Takes a token if there is one and returns 0; otherwise returns the seconds
        until there is one (the Retry-After) and takes nothing."""
        with self._lock:
            now = self._clock()
            level = self._level(client, now)
            wait = self._seconds_to_a_token(level)
            self._tokens[client] = (level if wait else level - 1, now)
            self._tokens.move_to_end(client)
            while len(self._tokens) > self.max_clients:
                self._tokens.popitem(last=False)
        return wait

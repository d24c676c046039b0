"""Retry countdowns that respect the broker's visibility timeout.

A countdown is held by the worker as an unacknowledged message; with the Redis
broker, one longer than the visibility timeout is redelivered while it waits
and runs twice. Every countdown is capped below it (celeryconfig).
"""

from __future__ import annotations

import random

import celeryconfig

# Provider 429/5xx/timeouts: about five minutes of trying, then a dead letter
# (the orphan poller keeps asking the provider about the job after that).
PROVIDER_MAX_ATTEMPTS = 12


def max_countdown() -> float:
    return celeryconfig.MAX_RETRY_COUNTDOWN


def countdown(retries: int, hint: float | None = None) -> float:
    """Exponential backoff with full jitter, honouring a provider's Retry-After."""
    cap = max_countdown()
    base = min(cap, 2**retries)
    wait = random.uniform(base / 2, base)
    if hint is not None:
        wait = max(wait, hint)
    return min(cap, wait)

"""Retry countdowns that respect the broker's visibility timeout.

A countdown is held by the worker as an unacknowledged message; with the Redis
broker, one longer than the visibility timeout is redelivered while it waits
and runs twice. Every countdown is capped below it (celeryconfig).
"""

from __future__ import annotations

from celery.utils.time import get_exponential_backoff_interval

import celeryconfig
from webhook_ingest.config import Settings

# Provider 429/5xx/timeouts: about five minutes of trying, then a dead letter
# (the orphan poller keeps asking the provider about the job after that).
PROVIDER_MAX_ATTEMPTS = 12


def max_countdown(settings: Settings) -> int:
    return celeryconfig.max_retry_countdown(settings)


def countdown(settings: Settings, retries: int, hint: float | None = None) -> float:
    """Exponential backoff with full jitter — a whole number of seconds drawn
    uniformly from 0 to min(cap, 2**retries), Celery's own formula — raised to a
    provider's Retry-After when it gave one, and never above the cap."""
    cap = max_countdown(settings)
    wait: float = get_exponential_backoff_interval(
        factor=1, retries=retries, maximum=cap, full_jitter=True
    )
    if hint is not None:
        wait = max(wait, hint)
    return min(cap, wait)

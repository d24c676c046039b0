"""Redis connections with short, bounded timeouts.

redis-py retries a failed command ten times with backoff by default; a webhook
receiver must instead answer 503 within about a second so the provider retries.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry


def connect(url: str, *, socket_timeout: float = 2.0) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=0.5,
        socket_timeout=socket_timeout,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 2),
        retry_on_error=[redis.exceptions.ConnectionError],
        health_check_interval=30,
        decode_responses=True,
    )

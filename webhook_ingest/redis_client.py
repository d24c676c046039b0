"""Redis connections with short, bounded timeouts.

redis-py retries a failed command ten times with backoff by default; a webhook
receiver must instead answer 503 within about a second so the provider retries.

A redis+sentinel:// URL (webhook_ingest.redis_sentinel) gives a client whose
connections ask the sentinels for the master's address when they connect: after
a failover the failed command's retry, or the next command, reaches the new
master without a restart. Until the sentinels have promoted one, commands fail
(ConnectionError, MasterNotFoundError) and the receiver answers 503.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from webhook_ingest import redis_sentinel

CONNECT_TIMEOUT_SECONDS = 0.5


def connect(url: str, *, socket_timeout: float = 2.0) -> redis.Redis:
    options = {
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": socket_timeout,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.05), 2),
        "retry_on_error": [redis.exceptions.ConnectionError],
        "health_check_interval": 30,
        "decode_responses": True,
    }
    if redis_sentinel.is_sentinel_url(url):
        parsed = redis_sentinel.parse(url)
        return sentinels(parsed, socket_timeout).master_for(
            parsed.master_name, **options, **parsed.data_node_kwargs()
        )
    return redis.Redis.from_url(url, **options)


def sentinels(url: redis_sentinel.SentinelUrl, socket_timeout: float = 2.0) -> Sentinel:
    """The sentinels of `url`, each asked with short timeouts and no retries: a
    sentinel that does not answer is skipped for the next one."""
    return Sentinel(
        url.sentinels,
        sentinel_kwargs={
            "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "socket_timeout": min(socket_timeout, 1.0),
            "decode_responses": True,
            "retry": Retry(NoBackoff(), 0),
            **url.sentinel_kwargs(),
        },
    )

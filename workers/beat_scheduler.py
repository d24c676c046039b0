"""RedBeat's scheduler, made to outlive a Redis outage.

RedBeat's `redbeat_redis_options["retry_period"]` wraps its Redis client in a
retrying proxy, but the beat lock it makes from that client is a plain
redis-py Lock bound to the unwrapped client. So the first tick after Redis
goes away raises ConnectionError from `lock.extend()`, beat logs CRITICAL and
exits (upstream: sibson/redbeat PR #314, issues #285, #230), found by
tests/faults/test_faults_redis.py. Under `make run` (honcho) one exiting process
stops them all; under any supervisor the orphan poller stops until a restart.

Here a tick that cannot reach Redis is retried after a short pause instead,
for as long as the outage lasts (the worker reconnects forever too,
broker_connection_max_retries None). Nothing is scheduled meanwhile: the lock
is extended before anything is sent, so beat never sends while it cannot
prove it still holds the lock. If the lock expired during the outage (longer
than redbeat_lock_timeout, or the key was not in the AOF) and another beat
took it, or nobody holds it, this beat waits to acquire it again like a
standby at start, rather than scheduling without it.

RedBeat reaches Redis through the service's own client (redis_client.connect),
made from `redbeat_redis_url` before RedBeat would make its own: the same
timeouts as every other process, and the same URL forms, redis+sentinel://
included. RedBeat's own Sentinel branch wants its options spelled apart from the
URL and builds a new client, with a new connection pool, every time it is asked
for one (several times a tick); this one follows the master after a failover
with one pool for the process's life.
"""

from __future__ import annotations

import logging

import redis
from redbeat import RedBeatScheduler
from redbeat.schedulers import REDBEAT_REDIS_KEY, RetryingConnection, ensure_conf

from webhook_ingest import redis_client
from webhook_ingest.config import redacted_url

log = logging.getLogger("celery.beat")

# Seconds between attempts while Redis is away: short, so ticks resume within
# about a second of its return; one warning line per attempt.
RETRY_SECONDS = 1.0


class Scheduler(RedBeatScheduler):
    def __init__(self, app, **kwargs):
        use_service_client(app)
        super().__init__(app, **kwargs)

    @property
    def info(self):
        # RedBeat's banner parses the URL with kombu, which reads the sentinels'
        # comma-separated hosts as one host with a bad port and raises.
        url = redacted_url(self.app.redbeat_conf.redis_url)
        lock = f"       . lock -> `{self.lock_key}` ({self.lock_timeout}s)"
        return f"       . redis -> {url}\n{lock}"

    def tick(self, min=min, **kwargs):
        try:
            return super().tick(min=min, **kwargs)
        except redis.exceptions.LockError:  # LockNotOwnedError: it expired meanwhile
            log.warning("beat: lost the lock while Redis was unavailable; waiting for it")
            return self._reacquire()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning(
                "beat: Redis unavailable (%s), retrying in %.0fs", type(exc).__name__, RETRY_SECONDS
            )
            return RETRY_SECONDS

    def _reacquire(self) -> float:
        try:
            # blocks until the lock is free, as acquire_distributed_beat_lock does at start
            self.lock.acquire()
        except (redis.ConnectionError, redis.TimeoutError):
            return RETRY_SECONDS  # the next tick's extend fails again and lands here
        log.info("beat: Acquired lock")
        return 0


def use_service_client(app) -> None:
    """Hands RedBeat the service's Redis client for its URL (see the module's docstring),
    inside RedBeat's retrying proxy as RedBeat would wrap its own."""
    if getattr(app, REDBEAT_REDIS_KEY, None) is not None:
        return
    conf = ensure_conf(app)
    options = dict(conf.redbeat_redis_options)
    client = redis_client.connect(conf.redis_url, socket_timeout=options.get("socket_timeout", 5))
    retry_period = options.get("retry_period")
    if retry_period is not None:
        client = RetryingConnection(retry_period, client)
    setattr(app, REDBEAT_REDIS_KEY, client)

"""Is this process ready to accept deliveries? The state Redis and the broker answer.

Used by `GET /readyz`; `GET /healthz` checks nothing on purpose (a Redis outage
must not get the receiver restarted).

Behind Redis Sentinel a dependency that does not answer is asked about: what the
sentinels say of its master (down, a failover in progress, a new master not yet
reached) is what an operator needs to tell a failover, which heals by itself in
seconds, from an outage.
"""

from __future__ import annotations

from celery import Celery

from webhook_ingest import redis_client, redis_sentinel
from webhook_ingest.services import Services

TIMEOUT_SECONDS = 1.0
# Flags a sentinel gives a master it sees as unreachable or being replaced.
_SWITCHING_FLAGS = ("s_down", "o_down", "failover_in_progress", "promoted")


def unavailable(services: Services, celery_app: Celery) -> dict[str, str]:
    """The dependencies that did not answer, each with the error's name; empty when ready."""
    problems = {}
    try:
        services.redis.ping()
    except Exception as exc:
        problems["redis"] = type(exc).__name__
    try:
        with celery_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=TIMEOUT_SECONDS)
    except Exception as exc:
        problems["broker"] = type(exc).__name__
    return problems


def switching(services: Services, problems: dict[str, str]) -> dict[str, str]:
    """For each unavailable dependency behind Sentinel, what its sentinels say."""
    urls = {"redis": services.settings.redis_url, "broker": services.settings.broker_url}
    return {
        name: sentinel_view(urls[name])
        for name in problems
        if name in urls and redis_sentinel.is_sentinel_url(urls[name])
    }


def sentinel_view(url: str) -> str:
    """One line: the master's state as the first sentinel that answers sees it."""
    parsed = redis_sentinel.parse(url)
    client = redis_client.sentinels(parsed, socket_timeout=TIMEOUT_SECONDS)
    for sentinel in client.sentinels:
        try:
            state = sentinel.sentinel_master(parsed.master_name)
        except Exception:  # noqa: BLE001, S112 - the next sentinel may answer
            continue
        finally:
            sentinel.close()
        flags = [flag for flag in str(state.get("flags", "")).split(",") if flag]
        address = f"{state.get('ip')}:{state.get('port')}"
        odd = [flag for flag in flags if flag in _SWITCHING_FLAGS]
        if odd:
            return (
                f"switching: sentinels see master {parsed.master_name!r} at {address} as "
                f"{','.join(odd)}; a replica is promoted within the sentinels' "
                "down-after-milliseconds + failover time"
            )
        return (
            f"switching: sentinels name {address} master of {parsed.master_name!r}; "
            "connections move to it as they reconnect"
        )
    return f"no sentinel of {parsed.hosts_text()} answers for {parsed.master_name!r}"

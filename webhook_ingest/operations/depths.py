"""How much is waiting in Redis: read at scrape time by `GET /metrics`, never summed
across processes (it belongs to Redis, not to a process)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis

from webhook_ingest.state import keys


@dataclass(frozen=True)
class Depths:
    dead_letters: int
    tracked_jobs: dict[str, int]  # unfinished jobs the orphan poller watches, by provider


def read_depths(client: redis.Redis, providers: Iterable[str]) -> Depths:
    """One round trip; raises redis.RedisError when Redis does not answer."""
    names = sorted(providers)
    with client.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.DEAD_LETTERS)
        for name in names:
            pipe.zcard(keys.live_jobs(name))
        dead_letters, *tracked = pipe.execute()
    return Depths(dead_letters, dict(zip(names, tracked, strict=True)))

"""How much is waiting in Redis: read at scrape time by `GET /metrics`, never summed
across processes (it belongs to Redis, not to a process)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from webhook_ingest.state import keys


@dataclass(frozen=True)
class Depths:
    dead_letters: int
    tracked_jobs: dict[str, int]  # unfinished jobs the orphan poller watches, by provider
    journal: int  # acknowledged deliveries not finished yet
    # when the journal's first-due delivery was received (ms); None when empty
    journal_oldest_received_at: int | None


def read_depths(client: redis.Redis, providers: Iterable[str]) -> Depths:
    """Two round trips; raises redis.RedisError when Redis does not answer."""
    names = sorted(providers)
    with client.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.DEAD_LETTERS)
        pipe.zcard(keys.JOURNAL)
        pipe.zrange(keys.JOURNAL, 0, 0)
        for name in names:
            pipe.zcard(keys.live_jobs(name))
        dead_letters, journal, first_due, *tracked = pipe.execute()
    oldest = None
    if first_due:
        message = client.hget(keys.JOURNAL_MESSAGES, first_due[0])
        oldest = json.loads(message).get("received_at") if message else None
    return Depths(dead_letters, dict(zip(names, tracked, strict=True)), journal, oldest)

"""How much is waiting in Redis and on the broker: read at scrape time by `GET /metrics`,
never summed across processes (it belongs to Redis or the broker, not to a process)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import redis
from celery import Celery
from kombu.exceptions import ChannelError

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


# A scrape waits at most about this long for the broker (connect, then one read per
# queue): Prometheus' default scrape timeout is 10 s, and the other gauges must
# still come through when the broker does not answer.
BROKER_TIMEOUT_SECONDS = 1.0


def read_queue_lengths(celery_app: Celery, queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting on each queue (not yet taken by a worker), through kombu, so
    the broker is reached exactly as the processes reach it (TLS, credentials,
    transport options): on the Redis broker a passive declare is LLEN of the queue's
    list (and of its priority lists, in one pipeline), on RabbitMQ it is the
    queue's message_count. A queue the broker does not have holds nothing: the
    Redis transport has no list while the queue is empty, and RabbitMQ has no queue
    before the first publish. Raises (kombu's or the transport's errors) when the
    broker does not answer within BROKER_TIMEOUT_SECONDS.

    Not counted: messages a worker has taken and not acknowledged yet (running, or
    held for a retry countdown on the Redis broker) — webhook_journal_depth covers
    every delivery not finished."""
    lengths = {}
    with celery_app.connection_for_read(connect_timeout=BROKER_TIMEOUT_SECONDS) as connection:
        if connection.transport.driver_type == "redis":
            # the transport's own read timeout is 2 s (celeryconfig), for publishing
            connection.transport_options["socket_timeout"] = BROKER_TIMEOUT_SECONDS
        connection.ensure_connection(
            max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT_SECONDS
        )
        for queue in queues:
            # A NOT_FOUND closes an AMQP channel: one channel per queue.
            with connection.channel() as channel:
                try:
                    lengths[queue] = channel.queue_declare(queue, passive=True).message_count
                except ChannelError as exc:
                    if getattr(exc, "reply_code", None) not in (404, "404"):
                        raise
                    lengths[queue] = 0
    return lengths

"""kombu's Redis transport, with one client for its synchronous commands per channel.

kombu builds a new `redis.Redis` object for every synchronous command it sends
(the acks_late bookkeeping: recording the unacked message when it arrives,
removing it on ack), about a tenth of the worker's time per delivery in a
profile (docs/benchmarks.md). The connections come from the channel's pool
either way; this keeps the client object too, made again when kombu replaces
the pool after a connection error. Nothing about when or what is acknowledged
changes.

It also counts a Redis that refuses writes as a broker that is away. kombu
files `OutOfMemoryError` (maxmemory with noeviction) and `ReadOnlyError` (a
master demoted to replica) under channel errors, which Celery's consumer does not
recover from: the worker logged "Unrecoverable error" and exited the moment the
broker's Redis filled up (tests/faults/test_faults_journal.py). As connection
errors they make the consumer reconnect and wait, as it does for a Redis that is
down; a message taken off the queue meanwhile and never recorded comes back by
the delivery journal's redrive.

celeryconfig selects it for redis:// and rediss:// brokers (`broker_transport`).
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis
from redis.exceptions import OutOfMemoryError, ReadOnlyError

REFUSING_WRITES = (OutOfMemoryError, ReadOnlyError)


class Channel(kombu_redis.Channel):
    _sync_client = None

    def _create_client(self, asynchronous=False):
        if asynchronous:  # the BRPOP client: kombu caches that one itself
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._sync_client
        if client is None or client.connection_pool is not pool:
            client = self._sync_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
    # a class attribute: kombu's Connection reads it from the class
    connection_errors = (*kombu_redis.Transport.connection_errors, *REFUSING_WRITES)

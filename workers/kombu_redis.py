"""kombu's Redis transport, with one client for its synchronous commands per channel.

kombu builds a new `redis.Redis` object for every synchronous command it sends
(the acks_late bookkeeping: recording the unacked message when it arrives,
removing it on ack), about a tenth of the worker's time per delivery in a
profile (docs/benchmarks.md). The connections come from the channel's pool
either way; this keeps the client object too, made again when kombu replaces
the pool after a connection error. Nothing about when or what is acknowledged
changes.

celeryconfig selects it for redis:// and rediss:// brokers (`broker_transport`).
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis


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

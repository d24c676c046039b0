"""kombu's Redis transport, with one client for its synchronous commands per channel,
and an acknowledgement's bookkeeping sent with the next delivery's.

kombu builds a new `redis.Redis` object for every synchronous command it sends
(the acks_late bookkeeping: recording the unacked message when it arrives,
removing it on ack), about a tenth of the worker's time per delivery in a
profile (docs/benchmarks.md). The connections come from the channel's pool
either way; this keeps the client object too, made again when kombu replaces
the pool after a connection error.

The bookkeeping itself was two synchronous round trips per delivery in the
worker's main process, each a MULTI/EXEC (44 % of that process's samples under
load, issue 16): the record on receipt and its removal on ack. When the consumer
runs in an event loop (a Celery worker), an ack now acknowledges the message to
kombu at once but queues the removal of its record, which goes to Redis in the
same transaction as the next delivery's record, or within `ACK_FLUSH_SECONDS`
from a timer when no delivery follows, and before the channel closes. What is
acknowledged, and when, does not change: a delivery is acknowledged only after
its outcome is recorded, and its record exists before it is handed to the pool.
A removal still queued when the worker dies is lost with it: that message comes
back after the visibility timeout, finds its journal record gone, and is
counted a duplicate (workers.tasks) -- the same as an ack lost in a crash today.
Consumers without an event loop (`SimpleQueue`, `drain_events`) ack as kombu does.

It also counts a Redis that refuses writes as a broker that is away. kombu
files `OutOfMemoryError` (maxmemory with noeviction) and `ReadOnlyError` (a
master demoted to replica) under channel errors, which Celery's consumer does not
recover from: the worker logged "Unrecoverable error" and exited the moment the
broker's Redis filled up (tests/faults/test_faults_journal.py). As connection
errors they make the consumer reconnect and wait, as it does for a Redis that is
down; a message taken off the queue meanwhile and never recorded comes back by
the delivery journal's redrive.

celeryconfig selects it for redis:// and rediss:// brokers (`broker_transport`),
and its Sentinel twin (`SentinelTransport`: kombu's Sentinel channel, the same
changes) for redis+sentinel:// ones. kombu's Sentinel connections ask the
sentinels for the master on every connect, and count a READONLY answer (a
demoted master) as a lost connection: a worker never goes on consuming from a
replica.
"""

from __future__ import annotations

import logging
import threading

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from redis.exceptions import OutOfMemoryError, ReadOnlyError

log = logging.getLogger(__name__)

REFUSING_WRITES = (OutOfMemoryError, ReadOnlyError)
# Longest an acknowledged message's record waits for the next delivery to carry
# its removal: far inside the visibility timeout (at least 10 s), so the sweep
# never mistakes a finished message for a lost one.
ACK_FLUSH_SECONDS = 0.1


class QoS(kombu_redis.QoS):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._finished: list[str] = []  # acked delivery tags whose records remain
        # a threads pool acks from its threads while the loop takes the list
        self._finished_lock = threading.Lock()

    def _take_finished(self) -> list[str]:
        with self._finished_lock:
            finished, self._finished = self._finished, []
        return finished

    def _give_back(self, finished: list[str]) -> None:
        with self._finished_lock:
            self._finished[:0] = finished

    def append(self, message, delivery_tag):
        """Record the delivery before it is handed over, removing the records of
        those acknowledged since, in one transaction (kombu: two)."""
        delivery = message.delivery_info
        record = kombu_redis.dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        finished = self._take_finished()
        try:
            with self.pipe_or_acquire() as pipe:
                for tag in finished:
                    self._remove_from_indices(tag, pipe)
                pipe.zadd(self.unacked_index_key, {delivery_tag: kombu_redis.time()})
                pipe.hset(self.unacked_key, delivery_tag, record)
                pipe.execute()
        except BaseException:
            self._give_back(finished)  # still to remove, on the next try
            raise
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag):
        # the channel's `connection` is the transport, which knows whether an
        # event loop flushes queued removals
        transport = self.channel.connection
        if transport is None:
            # A task that finished after its channel was closed (the master
            # demoted under the worker): its message cannot be acknowledged on
            # this connection and comes back by the sweep (a duplicate then).
            # As a connection error kombu logs it; an AttributeError made the
            # worker exit (tests/faults/test_faults_sentinel.py).
            raise redis.ConnectionError("the broker channel is closed")
        if not transport.defers_removals:
            return super().ack(delivery_tag)
        with self._finished_lock:
            self._finished.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def flush_removals(self) -> None:
        """Send the queued removals now (timer, channel close)."""
        if not self._finished:
            return
        finished = self._take_finished()
        try:
            with self.pipe_or_acquire() as pipe:
                for tag in finished:
                    self._remove_from_indices(tag, pipe)
                pipe.execute()
        except BaseException:
            self._give_back(finished)
            raise


class Channel(kombu_redis.Channel):
    QoS = QoS
    _sync_client = None

    def _create_client(self, asynchronous=False):
        if asynchronous:  # the BRPOP client: kombu caches that one itself
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._sync_client
        if client is None or client.connection_pool is not pool:
            client = self._sync_client = super()._create_client()
        return client

    def _connparams(self, asynchronous=False):
        # A channel whose first close failed half-way (the broker gone) is closed
        # again after kombu detached the transport from its connection; kombu's
        # own code then fails with AttributeError on the missing connection info,
        # which Celery takes for an unrecoverable error and the worker exited
        # (seen behind Sentinel: tests/faults/test_faults_sentinel.py). A lost
        # connection is what it is, and the consumer reconnects.
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection was closed")
        return super()._connparams(asynchronous=asynchronous)

    def close(self):
        # before kombu drops the pools and restores what is still unacked
        qos = self._qos
        if qos is not None and not self.closed:
            try:
                qos.flush_removals()
            except Exception as exc:  # noqa: BLE001 - closing must go on whatever Redis said
                log.warning(
                    "closing the broker channel: %d acknowledged messages stay in unacked "
                    "and come back after the visibility timeout as duplicates (%s)",
                    len(qos._finished),
                    type(exc).__name__,
                )
        super().close()


class Transport(kombu_redis.Transport):
    Channel = Channel
    # a class attribute: kombu's Connection reads it from the class
    connection_errors = (*kombu_redis.Transport.connection_errors, *REFUSING_WRITES)
    defers_removals = False  # until an event loop's timer flushes them

    def register_with_event_loop(self, connection, loop):
        super().register_with_event_loop(connection, loop)
        cycle = self.cycle
        old = getattr(cycle, "_flush_removals_tref", None)
        if old is not None:  # a reconnect registers again
            old.cancel()
        self.defers_removals = True
        cycle._flush_removals_tref = loop.call_repeatedly(ACK_FLUSH_SECONDS, _flush_removals, cycle)


def _flush_removals(cycle) -> None:
    for channel in list(cycle._channels):
        qos = channel._qos
        if qos is None:
            continue
        try:
            qos.flush_removals()
        except (*channel.connection_errors, redis.RedisError):
            return  # still queued: the next receipt or tick sends them


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel (the master's pool from the sentinels) with this
    module's client reuse and deferred removals."""


class SentinelTransport(Transport):
    default_port = kombu_redis.SentinelTransport.default_port
    Channel = SentinelChannel

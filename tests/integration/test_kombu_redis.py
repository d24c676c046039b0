"""workers/kombu_redis.py: kombu's Redis transport keeping one client for its
synchronous commands, sending an ack's removal with the next receipt, acks_late
bookkeeping otherwise unchanged (a real Redis)."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.asynchronous import Hub

from tests.conftest import TEST_BROKER_URL
from workers import app as celery_app
from workers import kombu_redis

UNACKED = "unacked"  # kombu's hash of delivered, not yet acknowledged messages


@pytest.fixture
def queue_name():
    name = f"kombu-redis-test-{uuid.uuid4().hex[:8]}"
    yield name
    store = redis.Redis.from_url(TEST_BROKER_URL)
    store.delete(name)
    store.close()


def test_the_shipped_configuration_uses_it_for_a_redis_broker():
    with celery_app.connection_for_read() as conn:
        assert isinstance(conn.transport, kombu_redis.Transport)
        assert isinstance(conn.default_channel, kombu_redis.Channel)


def test_a_message_is_unacked_until_acknowledged_and_gone_after(queue_name):
    store = redis.Redis.from_url(TEST_BROKER_URL)
    with Connection(TEST_BROKER_URL, transport=kombu_redis.Transport) as conn:
        queue = conn.SimpleQueue(queue_name)
        payloads = [{"n": n} for n in range(3)]
        for payload in payloads:
            queue.put(payload)
        tags = set()
        for payload in payloads:
            message = queue.get(timeout=5)
            assert message.payload == payload
            assert store.hexists(UNACKED, message.delivery_tag)  # recorded before the task runs
            tags.add(message.delivery_tag)
            message.ack()
            assert not store.hexists(UNACKED, message.delivery_tag)
        queue.close()
    assert len(tags) == 3
    assert store.llen(queue_name) == 0
    store.close()


def test_an_unacknowledged_message_returns_to_its_queue_when_the_channel_closes(queue_name):
    store = redis.Redis.from_url(TEST_BROKER_URL)
    with Connection(TEST_BROKER_URL, transport=kombu_redis.Transport) as conn:
        queue = conn.SimpleQueue(queue_name)
        queue.put({"n": 1})
        message = queue.get(timeout=5)
        assert store.llen(queue_name) == 0
        queue.close()  # a worker stopping with the task unfinished
    assert store.llen(queue_name) == 1
    assert not store.hexists(UNACKED, message.delivery_tag)
    store.close()


def test_one_client_serves_every_ack_and_a_new_pool_gets_a_new_client(queue_name):
    with Connection(TEST_BROKER_URL, transport=kombu_redis.Transport) as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.connection_pool is channel.pool
        # after a connection error kombu throws its pools away and makes new ones
        channel._disconnect_pools()
        with channel.conn_or_acquire() as third:
            assert third is not first
            assert third.connection_pool is channel.pool
            assert third.ping()


def test_a_redis_that_refuses_writes_is_a_broker_to_wait_for_not_a_reason_to_exit():
    """kombu counts OOM and READONLY replies as channel errors, on which Celery's
    consumer gives up and the worker exits; ours counts them as connection errors,
    which it reconnects from (the fault suite runs the worker through it)."""
    from redis.exceptions import OutOfMemoryError, ReadOnlyError

    with celery_app.connection_for_read() as conn:
        errors = conn.transport.connection_errors
        assert issubclass(OutOfMemoryError, errors)
        assert issubclass(ReadOnlyError, errors)
        assert celery_app.connection_for_read().connection_errors == errors


# -- an ack's removal rides with the next receipt (issue 16) -------------------------


def _run_until(hub, condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting on the event loop"
        hub.run_once()


def test_in_an_event_loop_an_acks_removal_goes_with_the_next_receipt_or_the_timer(queue_name):
    """As a Celery worker consumes (kombu's Hub): an acknowledged message's record
    leaves `unacked` in the same transaction that records the next delivery, and
    without a next delivery within ACK_FLUSH_SECONDS; every delivery is recorded
    before the consumer's callback sees it. kombu removed it in a round trip of its
    own at the ack."""
    store = redis.Redis.from_url(TEST_BROKER_URL)
    received = []
    recorded_on_arrival = []

    def on_message(body, message):
        recorded_on_arrival.append(store.hexists(UNACKED, message.delivery_tag))
        received.append(message)

    hub = Hub()
    with Connection(TEST_BROKER_URL, transport=kombu_redis.Transport) as conn:
        conn.transport.register_with_event_loop(conn.connection, hub)
        channel = conn.default_channel
        queue = Queue(queue_name, Exchange(queue_name), routing_key=queue_name)
        producer = Producer(channel, exchange=queue.exchange, routing_key=queue_name)
        for n in range(2):
            producer.publish({"n": n}, declare=[queue])
        consumer = Consumer(channel, [queue], callbacks=[on_message])
        consumer.qos(prefetch_count=1)
        consumer.consume()

        _run_until(hub, lambda: len(received) == 1)
        first = received[0]
        first.ack()
        assert store.hexists(UNACKED, first.delivery_tag)  # queued, not yet sent
        _run_until(hub, lambda: len(received) == 2)
        second = received[1]
        assert not store.hexists(UNACKED, first.delivery_tag)
        assert store.hexists(UNACKED, second.delivery_tag)

        second.ack()  # nothing follows it: the timer sends the removal
        started = time.monotonic()
        _run_until(hub, lambda: not store.hexists(UNACKED, second.delivery_tag))
        assert time.monotonic() - started < kombu_redis.ACK_FLUSH_SECONDS + 1.0
        consumer.cancel()
    hub.close()
    assert recorded_on_arrival == [True, True]
    assert [m.payload for m in received] == [{"n": 0}, {"n": 1}]
    assert store.llen(queue_name) == 0
    store.close()


def test_closing_the_channel_sends_the_removals_still_queued(queue_name):
    """A worker's warm shutdown: what it acknowledged neither stays in `unacked`
    (the sweep would deliver it again) nor goes back to the queue."""
    store = redis.Redis.from_url(TEST_BROKER_URL)
    received = []
    hub = Hub()
    with Connection(TEST_BROKER_URL, transport=kombu_redis.Transport) as conn:
        conn.transport.register_with_event_loop(conn.connection, hub)
        channel = conn.default_channel
        queue = Queue(queue_name, Exchange(queue_name), routing_key=queue_name)
        Producer(channel, exchange=queue.exchange, routing_key=queue_name).publish(
            {"n": 1}, declare=[queue]
        )
        consumer = Consumer(channel, [queue], callbacks=[lambda _b, m: received.append(m)])
        consumer.qos(prefetch_count=1)
        consumer.consume()
        _run_until(hub, lambda: received)
        received[0].ack()
        assert store.hexists(UNACKED, received[0].delivery_tag)
        channel.close()
    hub.close()
    assert not store.hexists(UNACKED, received[0].delivery_tag)
    assert store.llen(queue_name) == 0
    store.close()

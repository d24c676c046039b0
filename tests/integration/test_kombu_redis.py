"""workers/kombu_redis.py: kombu's Redis transport keeping one client for its
synchronous commands, with acks_late bookkeeping unchanged (a real Redis)."""

from __future__ import annotations

import uuid

import pytest
import redis
from kombu import Connection

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

"""Redis and the broker go away and come back (CONTRACT.md §3, last row of the table).

"broker or Redis unreachable -> 503 {"error": ...} — never 2xx unless enqueued."
The receiver must answer promptly (the design says about a second) so the
provider retries, must not lose a delivery it journaled before the broker
refused it (the retry is a duplicate and beat redrives it), and must heal by
itself when the servers return. /readyz names what is missing.

Every server here is a private redis-server (tests.support.PrivateRedis) that the
test stops and starts on the same port; the shared Redis is never touched.
"""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from tests.conftest import REPLICATE_SECRET
from tests.support import (
    PrivateRedis,
    Receiver,
    body_of,
    queued_in,
    seen_buckets,
    signed_headers,
)
from webhook_ingest.clock import now_ms
from webhook_ingest.handoff.publish import enqueue
from webhook_ingest.state import keys

QUEUE = "webhook_ingest"  # celeryconfig.task_default_queue
# The design answers within about a second (bounded connect timeouts and publish
# retries); this only proves the answer is bounded, not fast.
BOUND_SECONDS = 5.0


@pytest.fixture
def servers():
    started: list[PrivateRedis] = []

    def start() -> PrivateRedis:
        server = PrivateRedis()
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.cleanup()


def delivery(job_id: str) -> tuple[str, dict[str, str]]:
    body = body_of({"id": f"pred-{uuid.uuid4().hex[:8]}", "status": "starting"})
    return body, signed_headers(REPLICATE_SECRET, body)


def post(receiver: Receiver, job_id: str, body: str, headers: dict[str, str]):
    started = time.monotonic()
    response = receiver.client.post(f"/webhook/replicate/{job_id}", data=body, headers=headers)
    return response, time.monotonic() - started


def readyz(receiver: Receiver):
    started = time.monotonic()
    response = receiver.client.get("/readyz")
    return response, time.monotonic() - started


def queued(server: PrivateRedis) -> int:
    client = redis.Redis(port=server.port)
    try:
        return queued_in(client)
    finally:
        client.close()


def claimed(server: PrivateRedis, msg_id: str, job_id: str) -> bool:
    """Remembered by the receiver (in its provider's seen-delivery buckets)."""
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        return bool(seen_buckets(client, "replicate", msg_id, job_id))
    finally:
        client.close()


def journaled(server: PrivateRedis, msg_id: str, job_id: str) -> bool:
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        return client.hexists(keys.JOURNAL_MESSAGES, f"replicate/{job_id}/{msg_id}")
    finally:
        client.close()


def assert_unavailable(response, elapsed: float) -> dict:
    assert response.status_code == 503, (response.status_code, response.get_data(as_text=True))
    assert response.is_json
    payload = response.get_json()
    assert payload.get("error"), payload
    assert elapsed < BOUND_SECONDS, f"the 503 took {elapsed:.1f}s"
    return payload


def test_redis_down_answers_503_and_the_retry_is_accepted_when_it_is_back(
    servers, receiver_with, job_id
):
    """One Redis as state store and broker, as `make run` sets it up."""
    server = servers()
    receiver = receiver_with(redis_url=server.url, broker_url=server.url)

    body, headers = delivery(job_id)
    response, _ = post(receiver, job_id, body, headers)
    assert response.status_code == 202
    assert queued(server) == 1, "the delivery is on the private broker's queue"

    server.stop()
    body, headers = delivery(job_id)
    for _ in range(2):  # the first failure may be a stale pooled connection, the next a refusal
        response, elapsed = post(receiver, job_id, body, headers)
        assert_unavailable(response, elapsed)

    ready, elapsed = readyz(receiver)
    assert ready.status_code == 503
    assert elapsed < BOUND_SECONDS
    assert {"redis", "broker"} <= set(ready.get_json()["unavailable"])

    server.start()  # same port, empty (no persistence)
    response, _ = post(receiver, job_id, body, headers)  # the provider's retry
    assert response.status_code == 202
    assert response.get_json() == {"received": True}
    assert queued(server) == 1
    assert claimed(server, headers["webhook-id"], job_id)

    ready, _ = readyz(receiver)
    assert ready.status_code == 200


def test_broker_down_answers_503_and_the_journal_keeps_the_delivery_for_redrive(
    servers, receiver_with, job_id
):
    """The broker is a separate server: the delivery is journaled with its claim
    before the publish fails. The 503 makes the provider retry; the retry is
    answered as a duplicate at once (the journal holds the delivery, and may
    already have been promised to a concurrent retry); once the broker is back,
    beat's redrive publishes it exactly once."""
    state = servers()
    broker = PrivateRedis()  # a free port where nothing listens yet
    receiver = receiver_with(redis_url=state.url, broker_url=broker.url)
    body, headers = delivery(job_id)
    msg_id = headers["webhook-id"]

    response, elapsed = post(receiver, job_id, body, headers)
    assert_unavailable(response, elapsed)
    assert claimed(state, msg_id, job_id)
    assert journaled(state, msg_id, job_id)

    retry, _ = post(receiver, job_id, body, headers)
    assert retry.status_code == 200
    assert retry.get_json() == {"received": True, "duplicate": True}

    ready, elapsed = readyz(receiver)
    assert ready.status_code == 503
    assert elapsed < BOUND_SECONDS
    assert set(ready.get_json()["unavailable"]) == {"broker"}

    try:
        broker.start()
        assert queued(broker) == 0
        journal = receiver.services.journal
        assert journal.take_overdue(100) == []  # not overdue yet: no duplicate publish
        # as beat's redrive does once the record is overdue
        later = now_ms() + journal.redrive_after_ms + 1000
        [overdue] = journal.take_overdue(100, now=later)
        assert (overdue.delivery_id, overdue.journaled) == (msg_id, True)
        enqueue(receiver.celery, overdue)
        assert queued(broker) == 1
        assert journal.take_overdue(100, now=later) == []  # once per period at most
        assert post(receiver, job_id, body, headers)[0].status_code == 200
        assert queued(broker) == 1
        ready, _ = readyz(receiver)
        assert ready.status_code == 200
    finally:
        broker.cleanup()


def test_broker_lost_after_working_answers_503_until_it_returns(servers, receiver_with, job_id):
    state = servers()
    broker = servers()
    receiver = receiver_with(redis_url=state.url, broker_url=broker.url)

    body, headers = delivery(job_id)
    assert post(receiver, job_id, body, headers)[0].status_code == 202
    assert queued(broker) == 1

    broker.stop()
    for _ in range(2):
        body, headers = delivery(job_id)
        response, elapsed = post(receiver, job_id, body, headers)
        assert_unavailable(response, elapsed)
        # kept for beat's redrive (see the test above), never half-acknowledged
        assert journaled(state, headers["webhook-id"], job_id)

    broker.start()
    body, headers = delivery(job_id)
    response, _ = post(receiver, job_id, body, headers)
    assert response.status_code == 202
    assert queued(broker) == 1  # the restarted broker is empty: this is the new one


def test_state_redis_down_answers_503_and_enqueues_nothing(servers, receiver_with, job_id):
    state = servers()
    broker = servers()
    receiver = receiver_with(redis_url=state.url, broker_url=broker.url)

    state.stop()
    body, headers = delivery(job_id)
    response, elapsed = post(receiver, job_id, body, headers)

    assert_unavailable(response, elapsed)
    assert queued(broker) == 0
    ready, _ = readyz(receiver)
    assert ready.status_code == 503
    assert set(ready.get_json()["unavailable"]) == {"redis"}

    state.start()
    response, _ = post(receiver, job_id, body, headers)
    assert response.status_code == 202
    assert queued(broker) == 1

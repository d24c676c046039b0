"""Redis and the broker go away and come back (CONTRACT.md §3, last row of the table).

"broker or Redis unreachable -> 503 {"error": ...} — never 2xx unless enqueued."
The receiver must answer promptly (the design says about a second) so the
provider retries, must not remember a delivery it failed to enqueue (or the
retry would be swallowed as a duplicate), and must heal by itself when the
servers return. /readyz names what is missing.

Every server here is a private redis-server (tests.support.PrivateRedis) that the
test stops and starts on the same port; the shared Redis is never touched.
"""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from tests.conftest import REPLICATE_SECRET
from tests.support import PrivateRedis, Receiver, body_of, signed_headers
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
        return client.llen(QUEUE)
    finally:
        client.close()


def claim(server: PrivateRedis, msg_id: str) -> str | None:
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        return client.get(keys.delivery_claim("replicate", msg_id))
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
    assert claim(server, headers["webhook-id"]) == "enqueued"

    ready, _ = readyz(receiver)
    assert ready.status_code == 200


def test_broker_down_answers_503_and_releases_the_claim(servers, receiver_with, job_id):
    state = servers()
    broker = PrivateRedis()  # a free port where nothing listens yet
    receiver = receiver_with(redis_url=state.url, broker_url=broker.url)
    body, headers = delivery(job_id)
    msg_id = headers["webhook-id"]

    for attempt in range(2):
        response, elapsed = post(receiver, job_id, body, headers)
        assert_unavailable(response, elapsed)
        # released, not left "pending" or "enqueued": the retry must not be a duplicate
        assert claim(state, msg_id) is None, f"attempt {attempt + 1} left its claim"

    ready, elapsed = readyz(receiver)
    assert ready.status_code == 503
    assert elapsed < BOUND_SECONDS
    assert set(ready.get_json()["unavailable"]) == {"broker"}

    try:
        broker.start()
        response, _ = post(receiver, job_id, body, headers)
        assert response.status_code == 202
        assert response.get_json() == {"received": True}
        assert queued(broker) == 1
        assert claim(state, msg_id) == "enqueued"
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
    body, headers = delivery(job_id)
    for _ in range(2):
        response, elapsed = post(receiver, job_id, body, headers)
        assert_unavailable(response, elapsed)
        assert claim(state, headers["webhook-id"]) is None

    broker.start()
    response, _ = post(receiver, job_id, body, headers)
    assert response.status_code == 202
    assert queued(broker) == 1  # the restarted broker is empty: this is the retry


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

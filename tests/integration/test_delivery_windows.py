"""Each provider remembers delivery ids for its own retry window (README "Reliability",
handoff.seen): a retry inside the window is a duplicate; after it, the id is
forgotten, the delivery is accepted again and re-applied, which changes nothing.

Through the real receiver, the session's real worker and the real Redis, with a
window of 2 s (DELIVERY_DEDUP_TTL_SECONDS_REPLICATE; the tolerance is 1 s so the
replay floor, twice the tolerance, allows it).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import REPLICATE_SECRET, TEST_BROKER_URL, TEST_REDIS_URL
from tests.support import body_of, seen_buckets, signed_headers, wait_for
from webhook_ingest.state import keys

WINDOW = 2


@pytest.fixture
def short(receiver_with):
    """The receiver on the tests' Redis and broker (the session worker applies what it
    queues), remembering Replicate's ids for WINDOW seconds."""
    return receiver_with(
        redis_url=TEST_REDIS_URL,
        broker_url=TEST_BROKER_URL,
        WEBHOOK_TOLERANCE_SECONDS="1",
        DELIVERY_DEDUP_TTL_SECONDS=str(WINDOW),
        DELIVERY_DEDUP_TTL_SECONDS_REPLICATE=str(WINDOW),
    )


def events_of(redis_client, job_id: str, delivery_id: str) -> list[str]:
    """What became of each time the worker offered the delivery, newest first."""
    events = [json.loads(e) for e in redis_client.lrange(keys.job_events(job_id), 0, -1)]
    return [e["outcome"] for e in events if e["delivery_id"] == delivery_id]


def test_a_retry_inside_the_window_is_a_duplicate(short, job_id):
    body = body_of({"id": "pred-in", "status": "starting"})
    headers = signed_headers(REPLICATE_SECRET, body)
    url = f"/webhook/replicate/{job_id}"

    first = short.client.post(url, data=body, headers=headers)
    retry = short.client.post(
        url, data=body, headers=signed_headers(REPLICATE_SECRET, body, headers["webhook-id"])
    )

    assert first.status_code == 202
    assert retry.status_code == 200
    assert retry.get_json() == {"received": True, "duplicate": True}


def test_an_id_past_its_window_is_accepted_again_and_re_applied_harmlessly(
    short, worker, redis_client, job_id
):
    short.services.jobs.register(job_id, "replicate", "pred-late")
    body = body_of({"id": "pred-late", "status": "succeeded", "output": ["x.png"]})
    headers = signed_headers(REPLICATE_SECRET, body)
    delivery_id = headers["webhook-id"]
    url = f"/webhook/replicate/{job_id}"

    assert short.client.post(url, data=body, headers=headers).status_code == 202
    wait_for(lambda: events_of(redis_client, job_id, delivery_id) == ["applied"])
    state = redis_client.hgetall(keys.job_state(job_id))
    (bucket,) = seen_buckets(redis_client, "replicate", delivery_id, job_id)
    # kept at least the window, at most half as long again
    assert 0 < redis_client.ttl(bucket) <= WINDOW * 1.5

    time.sleep(WINDOW * 1.5 + 0.2)  # the window, and its last bucket, are over
    assert not redis_client.exists(bucket), "the bucket expires"
    # the provider's late retry, signed anew under the same id
    again = signed_headers(REPLICATE_SECRET, body, delivery_id)
    retry = short.client.post(url, data=body, headers=again)

    assert retry.status_code == 202
    assert retry.get_json() == {"received": True}
    wait_for(lambda: events_of(redis_client, job_id, delivery_id) == ["terminal", "applied"])
    assert redis_client.hgetall(keys.job_state(job_id)) == state

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


# -- the buckets, on the receiver's clock ------------------------------------------------------

HOUR = 3600  # a window of an hour: buckets of 1800 s


def claims_with_window(services, window: int = HOUR):
    from webhook_ingest.handoff.claims import DeliveryClaims
    from webhook_ingest.handoff.seen import SeenDeliveries

    return DeliveryClaims(services.redis, SeenDeliveries({"replicate": window}, window))


def claim_at(claims, services, delivery_id: str, now: float):
    from webhook_ingest.handoff.delivery import Delivery

    delivery = Delivery("replicate", delivery_id, "{}", job_id="job-w", journaled=True)
    return claims.claim(delivery, services.journal.record(delivery), now=now).value


@pytest.mark.parametrize(
    ("first", "retry", "answer"),
    [
        (0, HOUR - 1, "duplicate"),  # claimed at a bucket's start: a window later, still known
        (1799, 1799 + HOUR, "duplicate"),  # at its end: a window later, still known
        (0, 1.5 * HOUR, "new"),  # past 1.5 windows: always forgotten
        (1800.5, 1799, "duplicate"),  # a receiver whose clock is 1.5 s ahead went first
    ],
    ids=["start-of-bucket", "end-of-bucket", "after-one-and-a-half", "clock-skew"],
)
def test_an_id_is_known_for_its_window_wherever_in_a_bucket_it_was_claimed(
    services, redis_client, first, retry, answer
):
    claims = claims_with_window(services)
    start = (int(time.time()) // 1800) * 1800  # a bucket boundary
    delivery_id = f"msg_w{first}-{retry}-{time.time_ns()}"

    assert claim_at(claims, services, delivery_id, start + first) == "new"
    assert claim_at(claims, services, delivery_id, start + retry) == answer
    redis_client.delete(keys.JOURNAL, keys.JOURNAL_MESSAGES)


def test_each_bucket_expires_when_it_is_no_longer_checked(services, redis_client):
    claims = claims_with_window(services)
    now = time.time()
    start = (int(now) // 1800) * 1800

    assert claim_at(claims, services, f"msg_x{time.time_ns()}", now) == "new"

    bucket = keys.seen_deliveries("replicate", start // 1800)
    # checked as the current bucket and as either of the two after it: 3 × 1800 s
    assert redis_client.expiretime(bucket) == start + 3 * 1800
    redis_client.delete(keys.JOURNAL, keys.JOURNAL_MESSAGES)

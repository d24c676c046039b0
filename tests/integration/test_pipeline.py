"""Deliveries through the receiver and a real Celery worker into job_state (contract §3-§4).

Each test drives the service the way a provider does: signed HTTP deliveries,
possibly duplicated, reordered or early, and checks what the rest of the job
system would see in Redis and on pub/sub.
"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.conftest import OPENAI_SECRET, REPLICATE_SECRET
from tests.support import Subscriber, body_of, signed_headers, wait_for
from webhook_ingest.state import keys


def deliver(client, job_id, prediction, msg_id=None):
    body = body_of(prediction)
    headers = signed_headers(REPLICATE_SECRET, body, msg_id=msg_id)
    response = client.post(f"/webhook/replicate/{job_id}", data=body, headers=headers)
    assert response.status_code in (200, 202), response.get_json()
    return headers["webhook-id"]


def offered(redis_client, job_id: str, delivery_id: str) -> bool:
    """The worker offered the delivery to job_state (its event is there)."""
    events = redis_client.lrange(keys.job_events(job_id), 0, -1)
    return any(json.loads(event)["delivery_id"] == delivery_id for event in events)


def tqdm(percent: int) -> str:
    return f"{percent:3d}%|{'#' * (percent // 10):<10}| {percent}/100 [00:01<00:01]\n"


def state_of(redis_client, job_id):
    return redis_client.hgetall(keys.job_state(job_id))


def settled(redis_client, job_id, status):
    return wait_for(
        lambda: (
            state_of(redis_client, job_id).get("status") == status
            and state_of(redis_client, job_id)
        ),
        message=f"{job_id} to be {status}",
    )


@pytest.fixture
def broadcasts(redis_client, job_id):
    subscriber = Subscriber(redis_client, keys.progress_channel(job_id), keys.UPDATES_CHANNEL)
    yield subscriber
    subscriber.close()


def progress_updates(subscriber, job_id):
    return [
        message
        for channel, message in subscriber.drain()
        if channel == keys.progress_channel(job_id)
    ]


@pytest.mark.parametrize(
    ("prediction", "status", "progress", "error"),
    [
        ({"status": "starting"}, "processing", "0", None),
        ({"status": "processing", "logs": tqdm(10) + tqdm(42)}, "processing", "42", None),
        ({"status": "succeeded", "output": "done"}, "completed", "100", None),
        ({"status": "failed", "error": "CUDA out of memory"}, "failed", "0", "CUDA out of memory"),
        ({"status": "canceled"}, "failed", "0", "canceled"),
        ({"status": "aborted"}, "failed", "0", "aborted"),
    ],
)
def test_replicate_status_mapping(
    client, services, worker, redis_client, job_id, prediction, status, progress, error
):
    services.jobs.register(job_id, "replicate", "pred-map")
    deliver(client, job_id, {"id": "pred-map", **prediction})

    state = settled(redis_client, job_id, status)

    assert state["progress"] == progress
    assert state.get("error_message") == error
    assert state["provider"] == "replicate"
    assert state["external_job_id"] == "pred-map"
    assert state["source"] == "webhook"


def test_progress_follows_the_logs_and_never_goes_down(
    client, services, worker, redis_client, job_id, broadcasts
):
    services.jobs.register(job_id, "replicate", "pred-logs")
    for percent in (20, 60, 40):  # the 40 arrives late: throttled events are unordered
        deliver(client, job_id, {"id": "pred-logs", "status": "processing", "logs": tqdm(percent)})
        if percent == 60:
            wait_for(lambda: state_of(redis_client, job_id).get("progress") == "60")

    deliver(client, job_id, {"id": "pred-logs", "status": "succeeded", "output": [1]})
    settled(redis_client, job_id, "completed")

    seen = [m["progress"] for m in progress_updates(broadcasts, job_id)]
    assert seen == sorted(seen), f"progress went down on the wire: {seen}"
    assert seen[-1] == 100
    assert 40 not in seen  # the late 40 changed nothing, so nothing was broadcast


def test_event_after_terminal_is_ignored(client, services, worker, redis_client, job_id):
    services.jobs.register(job_id, "replicate", "pred-late")
    deliver(client, job_id, {"id": "pred-late", "status": "succeeded", "output": "final"})
    settled(redis_client, job_id, "completed")

    late = deliver(client, job_id, {"id": "pred-late", "status": "processing", "logs": tqdm(50)})
    wait_for(lambda: offered(redis_client, job_id, late), message="the late event offered")

    state = state_of(redis_client, job_id)
    assert state["status"] == "completed"
    assert state["progress"] == "100"
    assert state["result"] == '"final"'


def test_reversed_event_order_ends_in_the_terminal_state(
    client, services, worker, redis_client, job_id
):
    services.jobs.register(job_id, "replicate", "pred-rev")
    events = [
        {"status": "starting"},
        {"status": "processing", "logs": tqdm(30)},
        {"status": "processing", "logs": tqdm(70)},
        {"status": "succeeded", "output": ["out.png"]},
    ]
    for event in reversed(events):
        deliver(client, job_id, {"id": "pred-rev", **event})
    wait_for(
        lambda: redis_client.llen(keys.job_events(job_id)) == len(events),
        message="every event offered",
    )

    state = state_of(redis_client, job_id)
    assert state["status"] == "completed"
    assert state["progress"] == "100"
    assert state["result"] == '["out.png"]'


def test_duplicate_delivery_applied_once_and_broadcast_once(
    client, services, worker, redis_client, job_id, broadcasts
):
    services.jobs.register(job_id, "replicate", "pred-dup")
    prediction = {"id": "pred-dup", "status": "processing", "logs": tqdm(35)}
    body = body_of(prediction)
    headers = signed_headers(REPLICATE_SECRET, body)

    answers = [
        client.post(f"/webhook/replicate/{job_id}", data=body, headers=headers) for _ in range(3)
    ]

    assert [a.status_code for a in answers] == [202, 200, 200]
    assert [a.get_json().get("duplicate", False) for a in answers] == [False, True, True]
    wait_for(lambda: state_of(redis_client, job_id).get("progress") == "35")
    updates = progress_updates(broadcasts, job_id)
    assert len(updates) == 1
    assert updates[0]["progress"] == 35


def test_redelivered_task_is_applied_once(services, celery_app, worker, redis_client, job_id):
    """A worker crash redelivers a task the broker already gave out: apply() absorbs it."""
    from webhook_ingest.handoff.delivery import Delivery
    from webhook_ingest.handoff.publish import enqueue

    services.jobs.register(job_id, "replicate", "pred-redo")
    delivery = Delivery(
        provider="replicate",
        delivery_id=f"msg_{uuid.uuid4().hex}",
        body=body_of({"id": "pred-redo", "status": "processing", "logs": tqdm(10)}),
        job_id=job_id,
    )
    subscriber = Subscriber(redis_client, keys.progress_channel(job_id))
    try:
        enqueue(celery_app, delivery)
        enqueue(celery_app, delivery)
        wait_for(lambda: state_of(redis_client, job_id).get("progress") == "10")
        assert len(subscriber.drain(settle=1.0)) == 1
    finally:
        subscriber.close()


def test_webhook_before_mapping_waits_for_the_job(client, services, worker, redis_client, job_id):
    # The provider finished before the submitter wrote the mapping.
    deliver(client, job_id, {"id": "pred-early", "status": "succeeded", "output": "early"})
    assert not state_of(redis_client, job_id)

    services.jobs.register(job_id, "replicate", "pred-early")

    state = settled(redis_client, job_id, "completed")
    assert state["result"] == '"early"'
    assert services.dead_letters.count() == 0


def test_delivery_for_a_job_never_registered_is_parked_not_dropped(
    client, services, worker, redis_client, job_id
):
    msg_id = deliver(client, job_id, {"id": "pred-never", "status": "succeeded"})

    # UNMATCHED_RETRY_SECONDS is 4 in the tests; retries back off inside that window.
    letter = wait_for(
        lambda: next((d for d in services.dead_letters.list() if d["delivery_id"] == msg_id), None),
        timeout=20,
        message="the delivery to be parked",
    )
    assert letter["reason"] == "unmatched"
    assert letter["job_id"] == job_id
    assert letter["attempts"] >= 2
    assert letter["message"]["body"] == body_of({"id": "pred-never", "status": "succeeded"})
    assert "webhook-signature" not in letter["message"]["headers"]
    assert not state_of(redis_client, job_id)


def test_delivery_naming_another_prediction_is_parked(
    client, services, worker, redis_client, job_id
):
    services.jobs.register(job_id, "replicate", "pred-mine")
    msg_id = deliver(client, job_id, {"id": "pred-someone-else", "status": "succeeded"})

    letter = wait_for(
        lambda: next((d for d in services.dead_letters.list() if d["delivery_id"] == msg_id), None),
        message="the mismatched delivery to be parked",
    )
    assert letter["reason"] == "JobMismatch"
    assert not state_of(redis_client, job_id)


def openai_event(event_type: str, response_id: str) -> dict:
    return {
        "object": "event",
        "id": f"evt_{uuid.uuid4().hex}",
        "type": event_type,
        "created_at": 1750287018,
        "data": {"id": response_id},
    }


def deliver_openai(client, event):
    body = body_of(event)
    response = client.post(
        "/webhook/openai", data=body, headers=signed_headers(OPENAI_SECRET, body)
    )
    assert response.status_code == 202, response.get_json()


def test_openai_response_completed_fetches_the_output(
    client, services, worker, redis_client, job_id, api
):
    response_id = f"resp_{uuid.uuid4().hex[:8]}"
    services.jobs.register(job_id, "openai", response_id)
    output = [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}]
    api.respond(
        "GET",
        f"/v1/responses/{response_id}",
        (200, {"id": response_id, "object": "response", "status": "completed", "output": output}),
    )

    deliver_openai(client, openai_event("response.completed", response_id))

    state = settled(redis_client, job_id, "completed")
    assert json.loads(state["result"]) == output
    assert state["external_job_id"] == response_id
    sent = [r for r in api.requests if r["path"] == f"/v1/responses/{response_id}"]
    assert sent and sent[0]["headers"]["Authorization"] == "Bearer sk-test-key"


def test_openai_fetch_errors_are_retried_until_the_api_answers(
    client, services, worker, redis_client, job_id, api
):
    response_id = f"resp_{uuid.uuid4().hex[:8]}"
    services.jobs.register(job_id, "openai", response_id)
    failed = {"id": response_id, "status": "failed", "error": {"code": "x", "message": "boom"}}
    api.respond(
        "GET",
        f"/v1/responses/{response_id}",
        (500, {"error": "internal"}),
        (502, {"error": "bad gateway"}),
        (429, {"error": "slow down"}, {"Retry-After": "1"}),
        (503, {"error": "unavailable"}),
        (200, failed),
    )

    deliver_openai(client, openai_event("response.failed", response_id))

    state = settled(redis_client, job_id, "failed")
    assert state["error_message"] == "boom"
    assert api.calls("GET", f"/v1/responses/{response_id}") == 5


def test_openai_event_for_an_unknown_type_is_recorded_not_retried(
    client, services, worker, redis_client
):
    event = openai_event("realtime.call.incoming", "rtc_123")
    deliver_openai(client, event)

    recorded = wait_for(lambda: redis_client.lrange("webhook_ingest:ignored", 0, -1))
    assert '"realtime.call.incoming"' in recorded[0]
    assert services.dead_letters.count() == 0


@pytest.mark.parametrize(
    "mapping",
    [{"provider": "replicate"}, {"provider": "replicate", "external_job_id": ""}],
    ids=["no-external-id", "empty-external-id"],
)
def test_a_mapping_without_an_external_id_takes_no_delivery_and_parks_it_unmatched(
    client, services, worker, redis_client, job_id, mapping
):
    # Another service wrote the mapping with a plain HSET before it had the provider's
    # id (contract §4): nothing yet says which prediction is this job's.
    redis_client.hset(keys.job_mapping(job_id), mapping={**mapping, "created_at": "1"})

    msg_id = deliver(
        client, job_id, {"id": "pred-someone-else", "status": "succeeded", "output": "forged"}
    )

    letter = wait_for(
        lambda: next((d for d in services.dead_letters.list() if d["delivery_id"] == msg_id), None),
        timeout=20,
        message="the delivery to be parked as not matched",
    )
    assert letter["reason"] == "unmatched"
    assert not state_of(redis_client, job_id)
    assert redis_client.hgetall(keys.job_mapping(job_id)) == {**mapping, "created_at": "1"}


def test_a_delivery_waits_until_the_mapping_gets_its_external_id(
    client, services, worker, redis_client, job_id
):
    redis_client.hset(keys.job_mapping(job_id), mapping={"provider": "replicate"})
    deliver(client, job_id, {"id": "pred-later", "status": "succeeded", "output": "mine"})

    redis_client.hset(keys.job_mapping(job_id), "external_job_id", "pred-later")

    state = settled(redis_client, job_id, "completed")
    assert state["result"] == '"mine"'
    assert state["external_job_id"] == "pred-later"
    assert services.dead_letters.count() == 0

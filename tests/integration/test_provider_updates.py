"""The provider's own status beside ours, in the job's events (issue 12).

Each observation's event in `webhook_ingest:job_events:{job_id}` keeps the word
the provider used (`succeeded`, `IN_PROGRESS`, a fetched response's `incomplete`)
as `provider_status`, next to the normalized `status`; `GET /jobs/<id>` shows it.
The contract is untouched: the broadcast carries exactly its nine fields and
`job_state` holds no provider status.

Deliveries are signed as the providers sign them, go through the receiver and the
real in-process worker on the real Redis; polls ask the fake provider API.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest

from tests.conftest import OPENAI_SECRET, REPLICATE_SECRET
from tests.support import (
    BROADCAST_FIELDS,
    Subscriber,
    body_of,
    client_for,
    signed_headers,
    wait_for,
)
from webhook_ingest.operations.orphan_poller import OrphanPoller, PollOutcome
from webhook_ingest.providers import JobRef
from webhook_ingest.providers.declarative import Fields
from webhook_ingest.services import build_services
from webhook_ingest.state import keys

RUNPOD_TOKEN = "runpod-token-" + uuid.uuid4().hex


def events(redis_client, job_id: str) -> list[dict]:
    return [json.loads(e) for e in redis_client.lrange(keys.job_events(job_id), 0, -1)]


def said(redis_client, job_id: str) -> list[tuple[str, str | None, str]]:
    """(status, provider_status, outcome) of each event, newest first."""
    return [(e["status"], e["provider_status"], e["outcome"]) for e in events(redis_client, job_id)]


def wait_for_events(redis_client, job_id: str, count: int) -> None:
    wait_for(
        lambda: len(events(redis_client, job_id)) >= count,
        message=f"{count} events of {job_id}",
    )


def deliver_replicate(client, job_id: str, prediction: dict) -> None:
    body = body_of(prediction)
    response = client.post(
        f"/webhook/replicate/{job_id}", data=body, headers=signed_headers(REPLICATE_SECRET, body)
    )
    assert response.status_code == 202, response.get_json()


def test_replicate_statuses_are_kept_beside_ours_whatever_became_of_them(
    client, services, worker, redis_client, job_id
):
    prediction_id = f"pred-{uuid.uuid4().hex[:10]}"
    services.jobs.register(job_id, "replicate", prediction_id)
    sent = [
        {"status": "starting"},
        {"status": "processing", "logs": " 40%|####      | 40/100\n"},
        {"status": "succeeded", "output": ["https://replicate.delivery/x.png"]},
        {"status": "processing", "logs": " 70%|#######   | 70/100\n"},  # after the end
    ]
    for count, fields in enumerate(sent, start=1):
        deliver_replicate(client, job_id, {"id": prediction_id, **fields})
        wait_for_events(redis_client, job_id, count)

    assert said(redis_client, job_id) == [
        ("processing", "processing", "terminal"),
        ("completed", "succeeded", "applied"),
        ("processing", "processing", "applied"),
        ("processing", "starting", "applied"),
    ]


def test_an_openai_event_records_the_fetched_responses_status_not_the_event_type(
    client, services, worker, redis_client, api, job_id
):
    response_id = f"resp_{uuid.uuid4().hex}"
    services.jobs.register(job_id, "openai", response_id)
    api.respond(
        "GET",
        f"/v1/responses/{response_id}",
        (200, {"id": response_id, "status": "incomplete", "incomplete_details": {"reason": "x"}}),
    )
    event = {"type": "response.completed", "data": {"id": response_id}, "object": "event"}
    body = body_of({**event, "id": "evt_1", "created_at": 1750287018})

    answer = client.post("/webhook/openai", data=body, headers=signed_headers(OPENAI_SECRET, body))

    assert answer.status_code == 202, answer.get_json()
    wait_for_events(redis_client, job_id, 1)
    assert said(redis_client, job_id) == [("failed", "incomplete", "applied")]


def test_an_openai_event_without_a_response_records_its_event_type(
    client, services, worker, redis_client, job_id
):
    batch_id = f"batch_{uuid.uuid4().hex}"
    services.jobs.register(job_id, "openai", batch_id)
    body = body_of({"object": "event", "type": "batch.expired", "data": {"id": batch_id}})

    answer = client.post("/webhook/openai", data=body, headers=signed_headers(OPENAI_SECRET, body))

    assert answer.status_code == 202, answer.get_json()
    wait_for_events(redis_client, job_id, 1)
    assert said(redis_client, job_id) == [("failed", "batch.expired", "applied")]


def test_a_runpod_delivery_records_runpods_own_status(
    celery_app, services, worker, redis_client, job_id
):
    environ = {**os.environ, "WEBHOOK_URL_TOKEN_RUNPOD": RUNPOD_TOKEN}
    runpod_client = client_for(build_services(environ=environ), celery_app)
    services.jobs.register(job_id, "runpod", "rp-42")
    body = body_of({"id": "rp-42", "status": "IN_PROGRESS"})

    answer = runpod_client.post(
        f"/webhook/runpod/{job_id}/{RUNPOD_TOKEN}",
        data=body,
        headers={"Content-Type": "application/json"},
    )

    assert answer.status_code == 202, answer.get_json()
    wait_for_events(redis_client, job_id, 1)
    assert said(redis_client, job_id) == [("processing", "IN_PROGRESS", "applied")]


def test_an_orphan_poll_records_the_status_the_provider_answered(
    services, redis_client, api, job_id
):
    services.jobs.register(job_id, "replicate", "pred-polled")
    api.respond(
        "GET",
        "/v1/predictions/pred-polled",
        (200, {"id": "pred-polled", "status": "canceled"}),
    )

    assert OrphanPoller(services).poll("replicate", job_id) is PollOutcome.APPLIED

    [event] = events(redis_client, job_id)
    assert (event["source"], event["status"], event["provider_status"]) == (
        "orphan_poll",
        "failed",
        "canceled",
    )


def test_get_job_shows_the_provider_status_of_each_event(
    client, services, worker, redis_client, admin_headers, job_id
):
    services.jobs.register(job_id, "replicate", "pred-shown")
    deliver_replicate(client, job_id, {"id": "pred-shown", "status": "starting"})
    wait_for_events(redis_client, job_id, 1)

    view = client.get(f"/jobs/{job_id}", headers=admin_headers).get_json()

    [event] = view["events"]
    assert (event["status"], event["provider_status"]) == ("processing", "starting")


def test_the_broadcast_and_the_state_carry_no_provider_status(
    client, services, worker, redis_client, job_id
):
    services.jobs.register(job_id, "replicate", "pred-contract")
    subscriber = Subscriber(redis_client, keys.progress_channel(job_id))
    try:
        deliver_replicate(client, job_id, {"id": "pred-contract", "status": "succeeded"})
        wait_for_events(redis_client, job_id, 1)
        [(_, message)] = subscriber.drain()
    finally:
        subscriber.close()

    assert set(message) == BROADCAST_FIELDS
    assert message["status"] == "completed"
    state = redis_client.hgetall(keys.job_state(job_id))
    assert "provider_status" not in state
    assert "succeeded" not in state.values()


@pytest.mark.parametrize(
    ("answer", "status", "provider_status"),
    [
        ((202, {"id": "gen-1", "status": "in-progress"}), "processing", "in-progress"),
        ((200, {"finish_reason": "CONTENT_FILTERED", "seed": 1}), "failed", "CONTENT_FILTERED"),
    ],
    ids=["running", "filtered"],
)
def test_stability_polls_record_its_status_or_finish_reason(
    services, redis_client, api, job_id, answer, status, provider_status
):
    services.jobs.register(job_id, "stability", "gen-1")
    api.respond("GET", "/v2beta/results/gen-1", answer)

    assert OrphanPoller(services).poll("stability", job_id) is PollOutcome.APPLIED

    [event] = events(redis_client, job_id)
    assert (event["status"], event["provider_status"]) == (status, provider_status)


def test_fal_and_declarative_updates_carry_the_providers_own_status(services):
    job = JobRef("job-1", "fal", "req-1")
    fal = services.providers["fal"]
    failed = {"request_id": "req-1", "status": "ERROR", "error": "boom"}
    declared = Fields(status=("state",), status_map={"done": "completed"})

    assert fal.to_update(failed, job).provider_status == "ERROR"
    update = declared.update({"state": "done"}, job, "ext-1", "acme", "webhook")
    assert (update.status, update.provider_status) == ("completed", "done")

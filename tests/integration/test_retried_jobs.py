"""Issue 15, item 4: retried jobs.

RunPod can run a FAILED or TIMED_OUT job again under the same id
(`POST /v2/{endpoint}/retry/{id}`); the retried job's COMPLETED arrives after
our `failed`. The rule (README, "State rules"): a provider whose API retries jobs
under the same id may turn `failed` into `completed`; `completed` stays final for
every provider; for a provider that does not retry under the same id, `failed`
stays final; and no provider turns a finished job back into `processing`.

The RunPod deliveries go through the receiver app and the real worker, with the
per-job URL token derived here as the README documents it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets

import pytest

from tests.conftest import REPLICATE_SECRET
from tests.support import Subscriber, client_for, signed_headers, wait_for
from webhook_ingest.providers import PROVIDER_CLASSES
from webhook_ingest.state import keys
from webhook_ingest.state.job_update import (
    COMPLETED,
    FAILED,
    PROCESSING,
    SOURCE_WEBHOOK,
    JobStateUpdate,
)

SECRET = secrets.token_urlsafe(32)
OUTPUT = {"image_url": "https://cdn.example.com/retried.png"}


def token_of(job_id: str) -> str:
    mac = hmac.new(SECRET.encode(), job_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


@pytest.fixture
def runpod(services_with, job_id):
    """The receiver with RunPod's per-job tokens, publishing to the worker's broker,
    and the job registered."""
    services = services_with(
        WEBHOOK_URL_SECRET_RUNPOD=SECRET,
        WEBHOOK_URL_TOKEN_RUNPOD=None,
        WEBHOOK_BASE_URL="https://hooks.example.com",
    )
    services.jobs.register(job_id, "runpod", "rp-retried")
    return client_for(services, None)


def status_object(status: str, **fields) -> bytes:
    document = {"id": "rp-retried", "status": status, "delayTime": 40, **fields}
    if status == "COMPLETED":
        document["output"] = OUTPUT
    return json.dumps(document).encode()


def deliver(client, job_id: str, body: bytes) -> None:
    answer = client.post(
        f"/webhook/runpod/{job_id}/{token_of(job_id)}",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 202, answer.get_json()


def state_of(redis_client, job_id: str) -> dict[str, str]:
    return redis_client.hgetall(keys.job_state(job_id))


def wait_for_status(redis_client, job_id: str, status: str) -> dict[str, str]:
    return wait_for(
        lambda: (
            state_of(redis_client, job_id).get("status") == status
            and state_of(redis_client, job_id)
        ),
        message=f"the job to be {status}",
    )


def last_outcome(redis_client, job_id: str, count: int) -> str:
    """The outcome of the newest of `count` observations, once all were recorded."""
    events = wait_for(
        lambda: (
            len(found := redis_client.lrange(keys.job_events(job_id), 0, -1)) >= count and found
        ),
        message=f"{count} observations to be recorded",
    )
    return json.loads(events[0])["outcome"]


# -- RunPod: failed, retried, completed --------------------------------------------------


@pytest.mark.parametrize("failure", ["FAILED", "TIMED_OUT"])
def test_a_runpod_job_retried_after_failing_ends_completed(
    runpod, worker, redis_client, job_id, failure
):
    subscriber = Subscriber(redis_client, keys.progress_channel(job_id))
    try:
        deliver(runpod, job_id, status_object(failure, error="CUDA out of memory"))
        failed = wait_for_status(redis_client, job_id, FAILED)
        # the retry runs under the same id; RunPod calls the same webhook when it ends
        deliver(runpod, job_id, status_object("COMPLETED", executionTime=5100))
        state = wait_for_status(redis_client, job_id, COMPLETED)
        messages = wait_for(
            lambda: len(subscriber.drain()) >= 2 and subscriber.messages,
            message="both broadcasts",
        )
    finally:
        subscriber.close()

    assert failed["error_message"]
    assert json.loads(state["result"]) == OUTPUT
    assert state["progress"] == "100"
    assert "error_message" not in state  # the failure is over
    assert [m["status"] for _, m in messages] == [FAILED, COMPLETED]
    assert messages[-1][1]["error_message"] is None
    assert messages[-1][1]["result"] == OUTPUT


def test_a_runpod_failure_after_completion_leaves_it_completed(
    runpod, worker, redis_client, job_id
):
    deliver(runpod, job_id, status_object("COMPLETED"))
    wait_for_status(redis_client, job_id, COMPLETED)

    # e.g. the FAILED delivery of the first attempt, late or resent, after the retry completed
    deliver(runpod, job_id, status_object("FAILED", error="late"))

    assert last_outcome(redis_client, job_id, 2) == "terminal"
    state = state_of(redis_client, job_id)
    assert state["status"] == COMPLETED
    assert json.loads(state["result"]) == OUTPUT
    assert "error_message" not in state


def test_a_failed_runpod_job_does_not_go_back_to_processing(runpod, worker, redis_client, job_id):
    deliver(runpod, job_id, status_object("FAILED", error="boom"))
    wait_for_status(redis_client, job_id, FAILED)

    # a retry's IN_PROGRESS (a poll could see one): not final, so not news enough
    deliver(runpod, job_id, status_object("IN_PROGRESS"))

    assert last_outcome(redis_client, job_id, 2) == "terminal"
    assert state_of(redis_client, job_id)["status"] == FAILED


# -- a provider that does not retry under the same id --------------------------------------


def test_a_failed_replicate_prediction_stays_failed_when_a_success_follows(
    client, services, worker, redis_client, job_id
):
    services.jobs.register(job_id, "replicate", "pred-once")

    def send(status: str, **fields) -> None:
        body = json.dumps({"id": "pred-once", "status": status, **fields})
        answer = client.post(
            f"/webhook/replicate/{job_id}",
            data=body.encode(),
            headers=signed_headers(REPLICATE_SECRET, body),
        )
        assert answer.status_code == 202

    send("failed", error="the model crashed")
    wait_for_status(redis_client, job_id, FAILED)
    send("succeeded", output=["https://replicate.delivery/late.png"])

    assert last_outcome(redis_client, job_id, 2) == "terminal"
    state = state_of(redis_client, job_id)
    assert state["status"] == FAILED
    assert state["error_message"] == "the model crashed"
    assert "result" not in state


# -- the rule for every provider ---------------------------------------------------------


def observation(job_id: str, provider: str, status: str, **fields) -> JobStateUpdate:
    return JobStateUpdate(
        job_id=job_id,
        status=status,
        provider=provider,
        source=SOURCE_WEBHOOK,
        external_job_id="ext-1",
        **fields,
    )


@pytest.mark.parametrize("provider", sorted(PROVIDER_CLASSES))
def test_completed_stays_final_for_every_provider(provider, services, redis_client, job_id):
    state = services.state
    state.apply(observation(job_id, provider, COMPLETED, result={"ok": True}), "msg_done")

    failed = state.apply(observation(job_id, provider, FAILED, error_message="late"), "msg_fail")
    running = state.apply(observation(job_id, provider, PROCESSING, progress=50), "msg_run")

    assert failed.outcome.value == "terminal"
    assert running.outcome.value == "terminal"
    assert state_of(redis_client, job_id)["status"] == COMPLETED


@pytest.mark.parametrize("provider", sorted(PROVIDER_CLASSES))
def test_failed_becomes_completed_only_for_providers_that_retry_under_the_same_id(
    provider, services, redis_client, job_id
):
    state = services.state
    state.apply(observation(job_id, provider, FAILED, error_message="boom"), "msg_fail")

    later = state.apply(observation(job_id, provider, COMPLETED, result=[1]), "msg_done")

    expected = COMPLETED if provider == "runpod" else FAILED
    assert state_of(redis_client, job_id)["status"] == expected
    assert later.outcome.value == ("applied" if provider == "runpod" else "terminal")

"""Per-job URL tokens (issue 14, finding 7): one RunPod webhook URL no longer
proves anything for another job.

The token of `/webhook/runpod/<job_id>/<token>` is base64url (no padding) of
HMAC-SHA256(WEBHOOK_URL_SECRET_RUNPOD, job id). The tests derive it themselves,
as the README documents it, never with the code under test. The shared token
(WEBHOOK_URL_TOKEN_RUNPOD) is still accepted while it is configured: the
migration path. `POST /jobs` and `submit_job` answer with the URL to give the
provider for the job, for every provider.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets

import pytest

from tests.conftest import ADMIN_TOKEN
from tests.support import client_for, logged_text, wait_for
from webhook_ingest.config import ConfigError
from webhook_ingest.providers import JobRequest
from webhook_ingest.state import keys
from webhook_ingest.submission import submit_job

SECRET = secrets.token_urlsafe(32)
OLD_SECRET = secrets.token_urlsafe(32)
STRANGER_SECRET = secrets.token_urlsafe(32)
SHARED_TOKEN = "rp" + secrets.token_urlsafe(32)
HOOKS = "https://hooks.example.com"
ENDPOINT = "abc123endpoint"


def token_of(job_id: str, secret: str = SECRET) -> str:
    """The documented derivation, written out here rather than imported."""
    mac = hmac.new(secret.encode(), job_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def status_object(external_id: str, status: str = "COMPLETED") -> bytes:
    document = {"id": external_id, "status": status, "delayTime": 120, "executionTime": 3400}
    if status == "COMPLETED":
        document["output"] = {"image_url": "https://cdn.example.com/out.png"}
    return json.dumps(document).encode()


def deliver(client, job_id: str, token: str, body: bytes):
    return client.post(
        f"/webhook/runpod/{job_id}/{token}",
        data=body,
        headers={"Content-Type": "application/json"},
    )


def per_job(**overrides: str | None) -> dict[str, str | None]:
    return {
        "WEBHOOK_URL_SECRET_RUNPOD": SECRET,
        "WEBHOOK_URL_TOKEN_RUNPOD": None,
        "WEBHOOK_BASE_URL": HOOKS,
        **overrides,
    }


# -- the forgery the finding is about ---------------------------------------------------


def test_a_token_for_one_job_is_refused_on_another_jobs_url_and_nothing_is_written(
    receiver_with, job_id, caplog
):
    caplog.set_level(logging.DEBUG)
    receiver = receiver_with(**per_job())
    job_a, job_b = job_id, f"{job_id}-b"
    receiver.register(job_a, "runpod", "rp-a")
    receiver.register(job_b, "runpod", "rp-b")
    before = receiver.snapshot()

    # whoever holds job A's URL forges an update for job B
    forged = deliver(receiver.client, job_b, token_of(job_a), status_object("rp-b"))

    assert forged.status_code == 401
    assert set(forged.get_json()) == {"error"}
    assert receiver.snapshot() == before, "a refused delivery wrote to Redis"
    assert receiver.queued() == 0
    for secret in (SECRET, token_of(job_a), token_of(job_b)):
        assert secret not in forged.get_data(as_text=True)
        assert secret not in logged_text(caplog.records)
    # and job B's own token is the one that passes
    genuine = deliver(receiver.client, job_b, token_of(job_b), status_object("rp-b"))
    assert genuine.status_code == 202
    assert receiver.queued() == 1
    assert receiver.take_queued().job_id == job_b


def test_the_connectors_url_for_a_job_is_accepted_and_applied(
    services_with, api, worker, redis_client, job_id, caplog
):
    caplog.set_level(logging.DEBUG)
    services = services_with(
        **per_job(RUNPOD_BASE_URL=f"{api.url}/v2", RUNPOD_API_KEY="rpa_test_key_0123456789")
    )
    api.respond("POST", f"/v2/{ENDPOINT}/run", (200, {"id": "rp-new", "status": "IN_QUEUE"}))

    submitted = submit_job(
        services, "runpod", JobRequest(job_id, {"endpoint_id": ENDPOINT, "input": {}})
    )

    url = f"{HOOKS}/webhook/runpod/{job_id}/{token_of(job_id)}"
    assert submitted == "rp-new"  # still the provider's id, as callers expect
    assert submitted.webhook_url == url
    [run] = api.requests
    assert run["json"]["webhook"] == url
    assert token_of(job_id) not in repr(submitted)

    client = client_for(services, None)  # the broker the in-process worker consumes
    answer = client.post(url.removeprefix(HOOKS), data=status_object("rp-new"))

    assert answer.status_code == 202
    state = wait_for(
        lambda: (
            redis_client.hget(keys.job_state(job_id), "status") == "completed"
            and redis_client.hgetall(keys.job_state(job_id))
        ),
        message="the delivery to the connector's URL to be applied",
    )
    assert json.loads(state["result"]) == {"image_url": "https://cdn.example.com/out.png"}
    assert SECRET not in logged_text(caplog.records)
    assert token_of(job_id) not in logged_text(caplog.records)


# -- rotation and migration ---------------------------------------------------------------


def test_mid_rotation_a_token_under_either_secret_verifies(services_with, quiet_broker, job_id):
    services = services_with(**per_job(WEBHOOK_URL_SECRET_RUNPOD=f"{SECRET} {OLD_SECRET}"))
    client = client_for(services, quiet_broker)
    answers = {
        name: deliver(client, job_id, token_of(job_id, secret), status_object(name)).status_code
        for name, secret in (("new", SECRET), ("old", OLD_SECRET), ("other", STRANGER_SECRET))
    }

    assert answers == {"new": 202, "old": 202, "other": 401}
    # new URLs are made with the first secret
    assert services.providers["runpod"].job_webhook_url(job_id).endswith(f"/{token_of(job_id)}")


def test_while_migrating_the_shared_token_is_accepted_and_new_urls_are_per_job(
    services_with, quiet_broker, job_id
):
    both = services_with(**per_job(WEBHOOK_URL_TOKEN_RUNPOD=SHARED_TOKEN))
    client = client_for(both, quiet_broker)

    # jobs submitted before the secret was set still call back with the shared token
    assert deliver(client, job_id, SHARED_TOKEN, status_object("rp-1")).status_code == 202
    assert deliver(client, job_id, token_of(job_id), status_object("rp-2")).status_code == 202
    assert both.providers["runpod"].job_webhook_url(job_id) == (
        f"{HOOKS}/webhook/runpod/{job_id}/{token_of(job_id)}"
    )

    after = client_for(services_with(**per_job()), quiet_broker)  # the shared token unset

    assert deliver(after, job_id, SHARED_TOKEN, status_object("rp-3")).status_code == 401
    assert deliver(after, job_id, token_of(job_id), status_object("rp-4")).status_code == 202


def test_with_only_the_shared_token_it_still_works_as_before(services_with, quiet_broker, job_id):
    services = services_with(
        **per_job(WEBHOOK_URL_SECRET_RUNPOD=None, WEBHOOK_URL_TOKEN_RUNPOD=SHARED_TOKEN)
    )
    client = client_for(services, quiet_broker)

    assert deliver(client, job_id, SHARED_TOKEN, status_object("rp-1")).status_code == 202
    assert deliver(client, job_id, token_of(job_id), status_object("rp-2")).status_code == 401
    assert services.providers["runpod"].job_webhook_url(job_id).endswith(f"/{SHARED_TOKEN}")


@pytest.mark.parametrize(
    "value",
    [
        "short-secret-0123456789",  # under 32 characters
        "a" * 48,  # long but guessable
        f"{SECRET} change-me-change-me-change-me-change-me",  # one of several is a placeholder
    ],
    ids=["short", "repeated", "placeholder"],
)
def test_a_weak_url_secret_stops_the_process_without_echoing_it(services_with, value):
    with pytest.raises(ConfigError, match="WEBHOOK_URL_SECRET_RUNPOD") as raised:
        services_with(**per_job(WEBHOOK_URL_SECRET_RUNPOD=value))

    for secret in value.split():
        assert secret not in str(raised.value)


# -- POST /jobs and submit_job answer with the webhook URL ---------------------------------


def expected_urls(job_id: str) -> dict[str, str | None]:
    return {
        "openai": f"{HOOKS}/webhook/openai",  # project-level: one URL for every job
        "replicate": f"{HOOKS}/webhook/replicate/{job_id}",
        "fal": f"{HOOKS}/webhook/fal/{job_id}",
        "runpod": f"{HOOKS}/webhook/runpod/{job_id}/{token_of(job_id)}",
        "stability": None,  # no webhooks: recovered by polling
    }


@pytest.mark.parametrize("provider", ["openai", "replicate", "fal", "runpod", "stability"])
def test_post_jobs_answers_with_the_url_to_give_the_provider(
    services_with, quiet_broker, job_id, provider
):
    client = client_for(services_with(**per_job()), quiet_broker)
    job = {"job_id": job_id, "provider": provider, "external_job_id": f"{provider}-ext-1"}
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    created = client.post("/jobs", json=job, headers=headers)
    again = client.post("/jobs", json=job, headers=headers)

    assert created.status_code == 201
    assert again.status_code == 200
    for answer in (created, again):
        assert answer.get_json()["webhook_url"] == expected_urls(job_id)[provider]
        assert answer.get_json()["registered"] is True


def test_the_url_post_jobs_gives_for_a_runpod_job_is_accepted(services_with, quiet_broker, job_id):
    client = client_for(services_with(**per_job()), quiet_broker)
    answer = client.post(
        "/jobs",
        json={"job_id": job_id, "provider": "runpod", "external_job_id": "rp-9"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    path = answer.get_json()["webhook_url"].removeprefix(HOOKS)

    assert client.post(path, data=status_object("rp-9")).status_code == 202
    other = path.replace(job_id, f"{job_id}-other")
    assert client.post(other, data=status_object("rp-9")).status_code == 401


def test_submit_job_returns_the_webhook_url_of_a_per_job_provider(services_with, api, job_id):
    services = services_with(**per_job())
    api.respond("POST", "/v1/predictions", (201, {"id": "pred-v", "status": "starting"}))

    submitted = submit_job(
        services, "replicate", JobRequest(job_id, {"version": "abc", "input": {}})
    )

    assert submitted == "pred-v"
    assert submitted.external_job_id == "pred-v"
    assert submitted.webhook_url == f"{HOOKS}/webhook/replicate/{job_id}"

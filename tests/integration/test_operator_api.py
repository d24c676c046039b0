"""Operator endpoints (CONTRACT.md §3 "Operator endpoints", §4 job_mapping).

`GET /healthz` (alive), `GET /readyz` (Redis and broker reachable), and the job
registry over HTTP: `POST /jobs` (201, 409 on a conflicting mapping, 400 naming
the bad field) and `GET /jobs/<job_id>` (state and mapping as JSON), both behind
the `ADMIN_TOKEN` bearer (401 without).
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import ADMIN_TOKEN
from tests.support import client_for
from webhook_ingest.config import ConfigError
from webhook_ingest.state import keys
from webhook_ingest.state.job_update import JobStateUpdate


def register(client, headers, **job):
    return client.post("/jobs", json=job, headers=headers)


def mapping_keys(redis_client) -> list[str]:
    return redis_client.keys("job_mapping:*")


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.is_json
    payload = response.get_json()
    assert payload.get("error"), payload
    assert ADMIN_TOKEN not in response.get_data(as_text=True)
    return payload


# -- health and readiness ------------------------------------------------------------


def test_healthz_answers_without_auth(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.is_json


def test_readyz_answers_200_when_redis_and_broker_are_up(client):
    response = client.get("/readyz")

    assert response.status_code == 200, response.get_json()
    assert response.is_json


# -- authentication -------------------------------------------------------------------

BAD_AUTH = {
    "no-header": {},
    "wrong-token": {"Authorization": "Bearer not-the-admin-token-at-all"},
    "token-prefix": {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
    "token-with-suffix": {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    "empty-bearer": {"Authorization": "Bearer "},
    "bare-token": {"Authorization": ADMIN_TOKEN},
    "basic-scheme": {"Authorization": f"Basic {ADMIN_TOKEN}"},
    "token-in-another-header": {"X-Admin-Token": ADMIN_TOKEN},
}


@pytest.mark.parametrize("headers", BAD_AUTH.values(), ids=BAD_AUTH.keys())
def test_post_jobs_without_the_admin_token_is_401_and_registers_nothing(
    client, redis_client, job_id, headers
):
    response = register(
        client, headers, job_id=job_id, provider="replicate", external_job_id="pred-1"
    )

    assert_json_error(response, 401)
    assert mapping_keys(redis_client) == []


@pytest.mark.parametrize("headers", BAD_AUTH.values(), ids=BAD_AUTH.keys())
def test_get_job_without_the_admin_token_is_401_and_shows_nothing(
    client, services, job_id, headers
):
    services.jobs.register(job_id, "replicate", "pred-secret-ish")

    response = client.get(f"/jobs/{job_id}", headers=headers)

    assert_json_error(response, 401)
    assert "pred-secret-ish" not in response.get_data(as_text=True)


def test_operator_endpoints_are_disabled_without_admin_token(redis_client, services_with, job_id):
    disabled = services_with(ADMIN_TOKEN=None)
    assert disabled.settings.admin_token is None
    client = client_for(disabled, None)  # sends nothing to a broker

    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
        response = register(
            client, headers, job_id=job_id, provider="replicate", external_job_id="pred-1"
        )
        assert_json_error(response, 401)
        assert_json_error(client.get(f"/jobs/{job_id}", headers=headers), 401)
    assert mapping_keys(redis_client) == []
    # health and readiness stay open
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("token", ["change-me-to-a-long-token", "x" * 32])
def test_a_sample_or_low_entropy_admin_token_stops_the_receiver_at_start(services_with, token):
    # Issue 14, finding 6: the README's sample opened /jobs and /dead-letters to
    # anyone who had read the README.
    with pytest.raises(ConfigError, match="ADMIN_TOKEN") as refused:
        services_with(ADMIN_TOKEN=token)

    assert token not in str(refused.value)


# -- registering a job ------------------------------------------------------------------


def test_register_job_creates_the_mapping(client, redis_client, admin_headers, job_id):
    before_ms = int(time.time() * 1000)

    response = register(
        client, admin_headers, job_id=job_id, provider="replicate", external_job_id="pred-1"
    )

    assert response.status_code == 201, response.get_json()
    assert response.is_json
    mapping = redis_client.hgetall(keys.job_mapping(job_id))
    assert mapping["external_job_id"] == "pred-1"
    assert mapping["provider"] == "replicate"
    created_at = mapping["created_at"]
    assert created_at.isdigit(), created_at
    # epoch milliseconds, not seconds: within a minute of the moment of the request
    assert abs(int(created_at) - before_ms) < 60_000


def test_registering_the_same_mapping_again_is_idempotent(
    client, redis_client, admin_headers, job_id
):
    job = {"job_id": job_id, "provider": "openai", "external_job_id": "resp_1"}
    first = register(client, admin_headers, **job)
    mapping = redis_client.hgetall(keys.job_mapping(job_id))

    again = register(client, admin_headers, **job)

    assert first.status_code == 201
    assert again.status_code == 200, again.get_json()
    assert redis_client.hgetall(keys.job_mapping(job_id)) == mapping, "created_at must not move"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(
            ("job-a", "replicate", "pred-1"), ("job-a", "replicate", "pred-2"), id="other-external"
        ),
        pytest.param(
            ("job-a", "replicate", "pred-1"), ("job-a", "openai", "pred-1"), id="other-provider"
        ),
        pytest.param(
            ("job-a", "replicate", "pred-1"), ("job-b", "replicate", "pred-1"), id="other-job"
        ),
    ],
)
def test_conflicting_mapping_is_409_and_changes_nothing(
    client, redis_client, admin_headers, job_id, first, second
):
    def job(spec):
        name, provider, external = spec
        return {"job_id": f"{job_id}-{name}", "provider": provider, "external_job_id": external}

    assert register(client, admin_headers, **job(first)).status_code == 201
    mapping = redis_client.hgetall(keys.job_mapping(job(first)["job_id"]))

    response = register(client, admin_headers, **job(second))

    assert_json_error(response, 409)
    assert redis_client.hgetall(keys.job_mapping(job(first)["job_id"])) == mapping
    if job(second)["job_id"] != job(first)["job_id"]:
        assert not redis_client.exists(keys.job_mapping(job(second)["job_id"]))


BAD_REGISTRATIONS = {
    "job_id-missing": ({"provider": "replicate", "external_job_id": "pred-1"}, "job_id"),
    "job_id-empty": ({"job_id": "", "provider": "replicate", "external_job_id": "p"}, "job_id"),
    "job_id-with-space": (
        {"job_id": "job one", "provider": "replicate", "external_job_id": "p"},
        "job_id",
    ),
    "job_id-not-a-string": (
        {"job_id": 12345, "provider": "replicate", "external_job_id": "p"},
        "job_id",
    ),
    "job_id-too-long": (
        {"job_id": "j" * 129, "provider": "replicate", "external_job_id": "p"},
        "job_id",
    ),
    # issue 14, finding 8: this created job_mapping:job-nl\n
    "job_id-trailing-newline": (
        {"job_id": "job-nl\n", "provider": "replicate", "external_job_id": "p"},
        "job_id",
    ),
    "provider-missing": ({"job_id": "job-1", "external_job_id": "pred-1"}, "provider"),
    "provider-unknown": (
        {"job_id": "job-1", "provider": "nosuch", "external_job_id": "pred-1"},
        "provider",
    ),
    "external_job_id-missing": ({"job_id": "job-1", "provider": "replicate"}, "external_job_id"),
    "external_job_id-empty": (
        {"job_id": "job-1", "provider": "replicate", "external_job_id": ""},
        "external_job_id",
    ),
    "external_job_id-too-long": (
        {"job_id": "job-1", "provider": "replicate", "external_job_id": "p" * 257},
        "external_job_id",
    ),
    "external_job_id-null": (
        {"job_id": "job-1", "provider": "replicate", "external_job_id": None},
        "external_job_id",
    ),
}


@pytest.mark.parametrize(("body", "field"), BAD_REGISTRATIONS.values(), ids=BAD_REGISTRATIONS)
def test_invalid_registration_is_400_naming_the_field(
    client, redis_client, admin_headers, body, field
):
    response = client.post("/jobs", json=body, headers=admin_headers)

    payload = assert_json_error(response, 400)
    assert field in payload["error"], payload
    assert mapping_keys(redis_client) == []


NOT_AN_OBJECT = {
    "json-array": ('[{"job_id": "job-1", "provider": "replicate", "external_job_id": "p"}]',),
    "json-string": ('"job-1"',),
    "json-null": ("null",),
    "not-json": ("job_id=job-1&provider=replicate",),
    "empty": ("",),
}


@pytest.mark.parametrize(("raw",), NOT_AN_OBJECT.values(), ids=NOT_AN_OBJECT)
def test_registration_body_that_is_not_an_object_is_400(client, redis_client, admin_headers, raw):
    headers = {**admin_headers, "Content-Type": "application/json"}

    response = client.post("/jobs", data=raw, headers=headers)

    assert_json_error(response, 400)
    assert mapping_keys(redis_client) == []


# -- reading a job ----------------------------------------------------------------------


def test_unknown_job_is_404(client, admin_headers, job_id):
    assert_json_error(client.get(f"/jobs/{job_id}", headers=admin_headers), 404)


def test_registered_job_shows_its_mapping(client, admin_headers, job_id):
    register(client, admin_headers, job_id=job_id, provider="replicate", external_job_id="pred-7")

    response = client.get(f"/jobs/{job_id}", headers=admin_headers)

    assert response.status_code == 200
    body = response.get_json()
    assert body["mapping"]["external_job_id"] == "pred-7"
    assert body["mapping"]["provider"] == "replicate"
    assert not body.get("state")


def test_job_shows_mapping_and_state_after_an_update(client, services, admin_headers, job_id):
    register(client, admin_headers, job_id=job_id, provider="replicate", external_job_id="pred-8")
    services.state.apply(
        JobStateUpdate(
            job_id=job_id,
            external_job_id="pred-8",
            status="processing",
            progress=40,
            provider="replicate",
            source="webhook",
        ),
        delivery_id="msg_operator_test",
    )

    response = client.get(f"/jobs/{job_id}", headers=admin_headers)

    assert response.status_code == 200
    body = response.get_json()
    assert body["mapping"]["external_job_id"] == "pred-8"
    assert body["mapping"]["provider"] == "replicate"
    state = body["state"]
    assert state["status"] == "processing"
    assert int(state["progress"]) == 40
    assert state["provider"] == "replicate"
    assert state["source"] == "webhook"
    assert str(state["updated_at"]).isdigit()


def test_job_written_by_another_service_is_shown(client, redis_client, admin_headers, job_id):
    """Other services write job_mapping with a plain HSET (contract §4)."""
    redis_client.hset(
        keys.job_mapping(job_id),
        mapping={"external_job_id": "pred-ts", "provider": "replicate", "created_at": "1"},
    )

    response = client.get(f"/jobs/{job_id}", headers=admin_headers)

    assert response.status_code == 200
    assert response.get_json()["mapping"]["external_job_id"] == "pred-ts"

"""RunPod serverless (issue 4; providers.md): a secret token in the webhook URL is the
only proof, the status object is the delivery, submit and poll against the API.

The token is a secret handed to RunPod inside a URL: besides 202 for the right one
and 401 for anything else, these tests check that it shows up in no log record,
no error body and no Redis key or value. What every provider's webhook does
(accepted, another token, the same body again, two tokens mid-rotation) is
checked for RunPod by tests/integration/test_provider_contract.py.
"""

from __future__ import annotations

import json
import logging
import secrets

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import client_for, logged_text, wait_for
from webhook_ingest.config import ConfigError, load_settings
from webhook_ingest.providers import JobRef, JobRequest, PayloadError
from webhook_ingest.providers.http import ProviderError, ProviderNotFound
from webhook_ingest.providers.runpod import RunPodProvider, update_from_status
from webhook_ingest.state import keys
from webhook_ingest.submission import submit_job
from webhook_ingest.verification import VerificationError, Verified

TOKEN = "rp" + secrets.token_urlsafe(32)
OLD_TOKEN = "rp" + secrets.token_urlsafe(32)
API_KEY = "rpa_test_key_0123456789"
HOOKS = "https://hooks.example.com"
ENDPOINT = "abc123endpoint"


def runpod_settings(api, **overrides: str | None) -> dict[str, str | None]:
    """RunPod's variables, its API on the fake server (for `services_with`)."""
    return {
        # mid-rotation: the new token first (it goes into new URLs), the old one still valid
        "WEBHOOK_URL_TOKEN_RUNPOD": f"{TOKEN} {OLD_TOKEN}",
        "RUNPOD_BASE_URL": f"{api.url}/v2",
        "RUNPOD_API_KEY": API_KEY,
        "WEBHOOK_BASE_URL": HOOKS,
        **overrides,
    }


@pytest.fixture
def runpod_services(services_with, api):
    return services_with(**runpod_settings(api))


@pytest.fixture
def runpod_client(runpod_services, quiet_broker):
    return client_for(runpod_services, quiet_broker)


def status_object(job_id: str = "rp-job-1", status: str = "COMPLETED", **fields) -> bytes:
    document = {"id": job_id, "status": status, "delayTime": 120, "executionTime": 3400}
    if status == "COMPLETED":
        document["output"] = {"image_url": "https://cdn.example.com/out.png"}
    return json.dumps({**document, **fields}).encode()


def deliver(client, job_id: str, body: bytes, token: str | None = TOKEN):
    path = f"/webhook/runpod/{job_id}" + (f"/{token}" if token is not None else "")
    return client.post(path, data=body, headers={"Content-Type": "application/json"})


def everything_in(store: redis.Redis, skip: str | None = None) -> str:
    """Every key and value of the database as text, to search for a leaked secret."""
    parts = []
    for key in store.scan_iter(count=1000):
        if skip and key.startswith(skip):
            continue
        parts.append(key)
        kind = store.type(key)
        if kind == "string":
            parts.append(store.get(key) or "")
        elif kind == "hash":
            parts.extend(f"{k}={v}" for k, v in store.hgetall(key).items())
        elif kind == "list":
            parts.extend(store.lrange(key, 0, -1))
        elif kind == "set":
            # as bytes: the receiver's seen-delivery buckets hold binary digests
            members = store.execute_command("SMEMBERS", key, NEVER_DECODE=True)
            parts.extend(member.decode(errors="replace") for member in members)
        elif kind == "zset":
            parts.extend(store.zrange(key, 0, -1))
    return "\n".join(parts)


# -- the URL token ------------------------------------------------------------------


def test_the_right_token_is_accepted_and_the_delivery_applied_by_the_worker(
    runpod_services, worker, redis_client, job_id, caplog
):
    caplog.set_level(logging.DEBUG)
    runpod_services.jobs.register(job_id, "runpod", "rp-job-1")
    client = client_for(runpod_services, None)  # the broker the in-process worker consumes

    answer = deliver(client, job_id, status_object("rp-job-1"))

    assert answer.status_code == 202
    assert answer.get_json() == {"received": True}
    state = wait_for(
        lambda: (
            redis_client.hget(keys.job_state(job_id), "status") == "completed"
            and redis_client.hgetall(keys.job_state(job_id))
        ),
        message="the RunPod delivery to be applied",
    )
    assert json.loads(state["result"]) == {"image_url": "https://cdn.example.com/out.png"}
    assert state["external_job_id"] == "rp-job-1"
    assert state["source"] == "webhook"
    assert TOKEN not in logged_text(caplog.records)
    assert TOKEN not in everything_in(redis_client)


@pytest.mark.parametrize(
    "token",
    [
        TOKEN[:-1],  # one character short
        # one character off is the provider contract's "tampered" case
        # (tests/integration/test_provider_contract.py), as are a rotation and a resend
        TOKEN + "x",
        TOKEN.upper() if TOKEN.upper() != TOKEN else TOKEN.lower(),
        "x" * len(TOKEN),
        None,  # the URL without a token segment
    ],
    ids=["short", "longer", "case", "same-length", "missing"],
)
def test_any_other_token_is_rejected_with_401_and_leaks_nothing(
    runpod_client, redis_client, job_id, caplog, token
):
    caplog.set_level(logging.DEBUG)
    # rate-limit counters count rejected requests too: that is their job
    before = everything_in(redis_client, skip="LIMITS:")

    answer = deliver(runpod_client, job_id, status_object(), token=token)

    assert answer.status_code == 401
    assert set(answer.get_json()) == {"error"}
    text = answer.get_data(as_text=True)
    for secret in filter(None, (TOKEN, OLD_TOKEN, token)):
        assert secret not in text
        assert secret not in logged_text(caplog.records)
    assert everything_in(redis_client, skip="LIMITS:") == before
    assert TOKEN not in everything_in(redis_client)


URL_FORMS = {
    # the job id forgotten: the token takes its place
    "token-as-job-id": lambda token: f"/webhook/runpod/{token}",
    # a token that is no valid job id (400 before verification)
    "token-as-invalid-job-id": lambda token: f"/webhook/runpod/~{token}",
}


@pytest.mark.parametrize("form", URL_FORMS.values(), ids=URL_FORMS.keys())
@pytest.mark.parametrize("token", [TOKEN, OLD_TOKEN], ids=["new", "old"])
def test_a_url_without_its_job_id_is_refused_and_the_token_is_not_logged_as_one(
    runpod_client, redis_client, caplog, form, token
):
    # Issue 14, finding 6: POST /webhook/runpod/<token> logged the token as job_id.
    caplog.set_level(logging.DEBUG)
    before = everything_in(redis_client, skip="LIMITS:")

    answer = runpod_client.post(
        form(token), data=status_object(), headers={"Content-Type": "application/json"}
    )

    assert answer.status_code in (400, 401)
    assert set(answer.get_json()) == {"error"}
    assert token not in answer.get_data(as_text=True)
    rejected = [r for r in caplog.records if r.getMessage().startswith("delivery rejected")]
    assert rejected, "the refusal is still logged"
    assert all(getattr(r, "job_id", None) is None for r in rejected)
    assert token not in logged_text(caplog.records)
    assert everything_in(redis_client, skip="LIMITS:") == before


@pytest.mark.parametrize("configured", [False, True], ids=["not-configured", "unknown-name"])
def test_a_provider_that_cannot_say_what_its_segment_is_does_not_log_it(
    services_with, api, quiet_broker, caplog, configured
):
    """An unconfigured RunPod, or a typo in the provider's name: the segment may be a
    URL token all the same."""
    services = services_with(**runpod_settings(api, WEBHOOK_URL_TOKEN_RUNPOD=None))
    client = client_for(services, quiet_broker)
    caplog.set_level(logging.DEBUG)
    path = f"/webhook/runpod/{TOKEN}" if not configured else f"/webhook/runpd/{TOKEN}"

    answer = client.post(path, data=status_object())

    assert answer.status_code == 404
    assert TOKEN not in logged_text(caplog.records)


def test_a_token_segment_is_not_accepted_by_providers_without_url_tokens(runpod_client, job_id):
    # conftest configures Replicate with a signing secret and no URL token
    answer = runpod_client.post(f"/webhook/replicate/{job_id}/{TOKEN}", data=status_object())

    assert answer.status_code == 404
    assert TOKEN not in answer.get_data(as_text=True)


def test_without_a_token_configured_runpod_accepts_nothing(
    services_with, api, quiet_broker, job_id
):
    services = services_with(**runpod_settings(api, WEBHOOK_URL_TOKEN_RUNPOD=None))
    client = client_for(services, quiet_broker)

    answer = deliver(client, job_id, status_object())

    assert services.providers["runpod"].enabled is False
    assert answer.status_code == 404
    assert answer.get_json() == {"error": "provider not configured"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"WEBHOOK_SECRET_RUNPOD": "whsec_c2VjcmV0"}, "WEBHOOK_SECRET_RUNPOD"),
        (
            {
                "WEBHOOK_URL_TOKEN_RUNPOD": None,
                "WEBHOOK_BEARER_TOKEN_RUNPOD": "bt_Xq3v9LmR2pTa8ZkW4nYc7HdE",
            },
            "WEBHOOK_URL_TOKEN_RUNPOD",
        ),
        ({"WEBHOOK_URL_TOKEN_RUNPOD": "short"}, "WEBHOOK_URL_TOKEN_RUNPOD"),
        ({"WEBHOOK_URL_TOKEN_RUNPOD": "a/b" + "c" * 30}, "WEBHOOK_URL_TOKEN_RUNPOD"),
        ({"WEBHOOK_URL_TOKEN_RUNPOD": "tok%2F" + "c" * 30}, "WEBHOOK_URL_TOKEN_RUNPOD"),
    ],
    ids=["shared-secret", "bearer-only", "short-token", "slash", "percent"],
)
def test_a_configuration_runpod_could_never_pass_stops_the_process(
    services_with, api, overrides, message
):
    with pytest.raises(ConfigError, match=message) as raised:
        services_with(**runpod_settings(api, **overrides))

    assert TOKEN not in str(raised.value)


# -- the status mapping ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "status", "progress", "result", "error_message"),
    [
        ({"status": "IN_QUEUE"}, "processing", 0, None, None),
        ({"status": "IN_PROGRESS"}, "processing", None, None, None),
        (
            {"status": "COMPLETED", "output": {"text": "hi"}},
            "completed",
            None,
            {"text": "hi"},
            None,
        ),
        ({"status": "COMPLETED", "output": ["a", "b"]}, "completed", None, ["a", "b"], None),
        (
            {"status": "FAILED", "error": "CUDA out of memory"},
            "failed",
            None,
            None,
            "CUDA out of memory",
        ),
        ({"status": "FAILED"}, "failed", None, None, "job failed"),
        ({"status": "CANCELLED"}, "failed", None, None, "cancelled"),
        ({"status": "TIMED_OUT"}, "failed", None, None, "timed out"),
    ],
    ids=[
        "in-queue",
        "in-progress",
        "completed",
        "completed-list",
        "failed",
        "failed-silently",
        "cancelled",
        "timed-out",
    ],
)
def test_runpod_statuses_map_to_job_states(fields, status, progress, result, error_message):
    update = update_from_status(
        {"id": "rp-1", **fields}, JobRef("job-1", "runpod", "rp-1"), "webhook"
    )

    assert update.status == status
    assert update.progress == progress
    assert update.result == result
    assert update.error_message == error_message
    assert update.external_job_id == "rp-1"
    assert update.provider == "runpod"


@pytest.mark.parametrize(
    "payload",
    [
        {"status": "COMPLETED"},
        {"id": "rp-1", "status": "DONE"},
        {"id": "rp-1"},
        {"id": 7, "status": "COMPLETED"},
    ],
    ids=["no-id", "unknown-status", "no-status", "id-not-text"],
)
def test_a_status_object_runpod_does_not_send_is_a_payload_error(runpod_services, payload):
    with pytest.raises(PayloadError):
        runpod_services.providers["runpod"].to_update(payload, JobRef("job-1", "runpod", "rp-1"))


# -- connector: submit and poll ---------------------------------------------------------


def test_runpod_is_a_webhook_connector_whose_url_carries_the_first_token(runpod_services):
    runpod = runpod_services.providers["runpod"]

    config = runpod.get_webhook_config("job-1")

    assert runpod.supports_webhooks() is True
    assert config.url == f"{HOOKS}/webhook/runpod/job-1/{TOKEN}"
    assert config.auth == "url-token"


def test_without_a_token_there_is_no_webhook_config_to_submit_with(services_with, api):
    services = services_with(**runpod_settings(api, WEBHOOK_URL_TOKEN_RUNPOD=None))

    with pytest.raises(ConfigError, match="WEBHOOK_URL_TOKEN_RUNPOD"):
        services.providers["runpod"].get_webhook_config("job-1")


def test_submit_runs_the_job_with_our_webhook_and_maps_it(
    runpod_services, api, redis_client, job_id, caplog
):
    caplog.set_level(logging.DEBUG)
    api.respond("POST", f"/v2/{ENDPOINT}/run", (200, {"id": "rp-new", "status": "IN_QUEUE"}))
    params = {"endpoint_id": ENDPOINT, "input": {"prompt": "a cat"}, "policy": {"ttl": 600000}}

    external_id = submit_job(runpod_services, "runpod", JobRequest(job_id, params))

    assert external_id == "rp-new"
    [sent] = api.requests
    assert sent["json"] == {
        "input": {"prompt": "a cat"},
        "policy": {"ttl": 600000},
        "webhook": f"{HOOKS}/webhook/runpod/{job_id}/{TOKEN}",
    }
    assert sent["headers"]["Authorization"] == f"Bearer {API_KEY}"
    mapping = redis_client.hgetall(keys.job_mapping(job_id))
    assert mapping["external_job_id"] == "rp-new"
    assert mapping["provider"] == "runpod"
    assert TOKEN not in logged_text(caplog.records)


@pytest.mark.parametrize(
    "params",
    [{"input": {"x": 1}}, {"endpoint_id": "../x", "input": {}}, {"endpoint_id": ENDPOINT}],
    ids=["no-endpoint", "traversal", "no-input"],
)
def test_a_bad_runpod_job_is_refused_before_anything_is_sent(runpod_services, api, params):
    with pytest.raises(ValueError):
        runpod_services.providers["runpod"].submit(JobRequest("job-1", params))

    assert api.requests == []


def test_the_endpoint_may_come_from_runpod_endpoint_id(services_with, api, job_id):
    services = services_with(**runpod_settings(api, RUNPOD_ENDPOINT_ID=ENDPOINT))
    api.respond("POST", f"/v2/{ENDPOINT}/run", (200, {"id": "rp-default", "status": "IN_QUEUE"}))

    external_id = services.providers["runpod"].submit(JobRequest(job_id, {"input": {}}))

    assert external_id == "rp-default"


@pytest.mark.parametrize(
    ("answer", "status", "result"),
    [
        ({"id": "rp-7", "status": "IN_QUEUE"}, "processing", None),
        ({"id": "rp-7", "status": "IN_PROGRESS"}, "processing", None),
        ({"id": "rp-7", "status": "COMPLETED", "output": {"ok": True}}, "completed", {"ok": True}),
        ({"id": "rp-7", "status": "CANCELLED"}, "failed", None),
    ],
    ids=["in-queue", "in-progress", "completed", "cancelled"],
)
def test_poll_asks_the_endpoint_the_job_was_submitted_to(
    runpod_services, api, job_id, answer, status, result
):
    runpod = runpod_services.providers["runpod"]
    api.respond("POST", f"/v2/{ENDPOINT}/run", (200, {"id": "rp-7", "status": "IN_QUEUE"}))
    runpod.submit(JobRequest(job_id, {"endpoint_id": ENDPOINT, "input": {}}))
    api.respond("GET", f"/v2/{ENDPOINT}/status/rp-7", (200, answer))

    update = runpod.poll_job_status(JobRef(job_id, "runpod", "rp-7"))

    assert update.status == status
    assert update.result == result
    assert update.source == "orphan_poll"
    [poll] = [r for r in api.requests if r["method"] == "GET"]
    assert poll["headers"]["Authorization"] == f"Bearer {API_KEY}"


def test_poll_of_a_job_runpod_does_not_know_is_not_found(runpod_services, api, job_id):
    runpod = runpod_services.providers["runpod"]
    api.respond("POST", f"/v2/{ENDPOINT}/run", (200, {"id": "rp-gone", "status": "IN_QUEUE"}))
    runpod.submit(JobRequest(job_id, {"endpoint_id": ENDPOINT, "input": {}}))
    api.respond("GET", f"/v2/{ENDPOINT}/status/rp-gone", (404, {"error": "request does not exist"}))

    with pytest.raises(ProviderNotFound):
        runpod.poll_job_status(JobRef(job_id, "runpod", "rp-gone"))


def test_a_job_registered_elsewhere_is_polled_on_runpod_endpoint_id(
    redis_client, services_with, api, job_id
):
    services = services_with(**runpod_settings(api, RUNPOD_ENDPOINT_ID=ENDPOINT))
    redis_client.hset(
        keys.job_mapping(job_id), mapping={"external_job_id": "rp-x", "provider": "runpod"}
    )
    api.respond(
        "GET", f"/v2/{ENDPOINT}/status/rp-x", (200, {"id": "rp-x", "status": "IN_PROGRESS"})
    )

    update = services.providers["runpod"].poll_job_status(JobRef(job_id, "runpod", "rp-x"))

    assert update.status == "processing"


def test_a_job_with_no_known_endpoint_cannot_be_polled_and_says_why(runpod_services, api):
    with pytest.raises(ProviderError, match="RUNPOD_ENDPOINT_ID"):
        runpod_services.providers["runpod"].poll_job_status(JobRef("job-1", "runpod", "rp-unknown"))

    assert api.requests == []


# -- property: the verifier raises only VerificationError --------------------------------


def offline_runpod(environ: dict[str, str]) -> RunPodProvider:
    """A provider on a Redis address where nothing listens: verification needs none."""
    environ = {**environ, "REDIS_URL": "redis://127.0.0.1:1/0"}
    return RunPodProvider(load_settings(environ), environ)


@pytest.fixture(scope="module")
def url_token_verifier():
    return offline_runpod({"WEBHOOK_URL_TOKEN_RUNPOD": f"{TOKEN} {OLD_TOKEN}"}).verifier


@settings(max_examples=500, deadline=None)
@given(
    body=st.binary(max_size=1024),
    headers=st.dictionaries(st.text(max_size=30), st.text(max_size=100)),
    url_token=st.one_of(
        st.none(), st.text(max_size=200), st.sampled_from([TOKEN[:-1], TOKEN + " "])
    ),
)
def test_anything_but_a_configured_token_is_a_verification_error(
    url_token_verifier, body, headers, url_token
):
    with pytest.raises(VerificationError) as raised:
        url_token_verifier.verify(body, headers, url_token=url_token)

    assert TOKEN not in raised.value.reason


@settings(max_examples=50, deadline=None)
@given(
    body=st.binary(max_size=1024),
    headers=st.dictionaries(st.text(max_size=30), st.text(max_size=100)),
)
def test_a_configured_token_verifies_whatever_the_body_and_names_no_delivery_id(
    url_token_verifier, body, headers
):
    verified = url_token_verifier.verify(body, headers, url_token=TOKEN)

    # no delivery id (the receiver then uses a digest of the body), no signed time
    assert verified == Verified(delivery_id=None, timestamp=None)


def test_a_fresh_token_for_the_docs_is_url_safe_and_long_enough():
    token = secrets.token_urlsafe(32)
    provider = offline_runpod({"WEBHOOK_URL_TOKEN_RUNPOD": token})

    assert provider.takes_url_token
    assert provider.get_webhook_config("j").url.endswith(f"/webhook/runpod/j/{token}")

"""Configuration that matches the providers' SDKs (issue 15, item 5).

- `<P>_BASE_URL` means what the provider's own SDK means by its base URL:
  `REPLICATE_BASE_URL` is the host root, as in replicate-python (a trailing `/v1`
  still works); `OPENAI_BASE_URL` ends in `/v1` (openai-python); `FAL_BASE_URL`
  is the queue host (fal-client's `queue.fal.run`); `RUNPOD_BASE_URL` ends in
  `/v2` (runpod-python's `endpoint_url_base`); `STABILITY_BASE_URL` is the host
  root. Checked by the paths the local stand-in (tests.support.FakeProviderAPI)
  receives.
- A provider that accepts webhooks but whose API cannot be called (no API key;
  RunPod without an endpoint id) is reported by `webhook-ingest check-config`
  and warned about when the web and worker processes start.
- A delivery whose fetch is refused (401/403) is parked at once as
  `provider_auth`, not retried.
- `POST /jobs` takes where a job started elsewhere is polled (`app_id` for fal,
  `endpoint_id` for RunPod), keeps it in the job's mapping, and the orphan
  poller uses it.
"""

from __future__ import annotations

import secrets
import uuid

import pytest
from click.testing import CliRunner

from tests.conftest import OPENAI_SECRET
from tests.integration.test_end_to_end import Service
from tests.support import body_of, client_for, signed_headers, wait_for
from webhook_ingest.operations.cli import main
from webhook_ingest.operations.orphan_poller import OrphanPoller, PollOutcome
from webhook_ingest.providers import JobRef, JobRequest
from webhook_ingest.state import keys

RUNPOD_URL_SECRET = secrets.token_urlsafe(32)


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def paths(api) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in api.requests]


# -- base URLs: what each SDK means ----------------------------------------------------


@pytest.mark.parametrize(
    "base", ["{api}", "{api}/", "{api}/v1", "{api}/v1/"], ids=["root", "root/", "v1", "v1/"]
)
def test_replicate_base_url_is_the_host_root_and_a_trailing_v1_still_works(
    services_with, api, job_id, base
):
    # Issue 15: replicate-python reads REPLICATE_BASE_URL as the host root; this
    # service read it as the /v1 root, so the SDK's value polled /predictions/{id}.
    services = services_with(REPLICATE_BASE_URL=base.format(api=api.url))
    replicate = services.providers["replicate"]
    prediction_id = new_id("pred")
    api.respond(
        "GET",
        f"/v1/predictions/{prediction_id}",
        (200, {"id": prediction_id, "status": "starting"}),
    )

    update = replicate.poll_job_status(JobRef(job_id, "replicate", prediction_id))

    assert update.status == "processing"
    assert paths(api) == [("GET", f"/v1/predictions/{prediction_id}")]


def test_replicate_submits_under_v1_from_the_host_root(services_with, api, job_id):
    services = services_with(REPLICATE_BASE_URL=api.url)
    api.respond("POST", "/v1/predictions", (201, {"id": "p-1", "status": "starting"}))
    api.respond("POST", "/v1/models/owner/name/predictions", (201, {"id": "p-2"}))
    replicate = services.providers["replicate"]
    assert replicate.submit(JobRequest(job_id, {"version": "abc", "input": {}})) == "p-1"
    assert replicate.submit(JobRequest(job_id, {"model": "owner/name", "input": {}})) == "p-2"
    assert paths(api) == [
        ("POST", "/v1/predictions"),
        ("POST", "/v1/models/owner/name/predictions"),
    ]


def test_replicate_default_api_is_replicate_pythons_host_with_v1(services_with):
    services = services_with(REPLICATE_BASE_URL=None)
    replicate = services.providers["replicate"]

    assert replicate.base_url == "https://api.replicate.com"
    assert replicate.api_url == "https://api.replicate.com/v1"


# What each SDK takes as its base URL, and our default: the same value.
SDK_DEFAULTS = {
    "openai": "https://api.openai.com/v1",  # openai-python OPENAI_BASE_URL
    "fal": "https://queue.fal.run",  # fal-client: https:// + FAL_QUEUE_RUN_HOST
    "runpod": "https://api.runpod.ai/v2",  # runpod-python endpoint_url_base
    "stability": "https://api.stability.ai",  # Stability's REST examples: API_HOST
}


@pytest.mark.parametrize(("provider", "default"), SDK_DEFAULTS.items(), ids=SDK_DEFAULTS)
def test_every_other_base_url_defaults_to_its_sdks_value(services_with, provider, default):
    services = services_with(**{f"{provider.upper()}_BASE_URL": None})

    assert services.providers[provider].base_url == default


def test_each_base_url_is_read_with_its_sdks_meaning(services_with, api, job_id):
    """With each variable set as its SDK's users set it, a poll reaches the path the
    provider documents: nothing is added or missing between base and path."""
    services = services_with(
        OPENAI_BASE_URL=f"{api.url}/v1",
        FAL_BASE_URL=api.url,
        FAL_API_KEY="fal-key",
        RUNPOD_BASE_URL=f"{api.url}/v2",
        RUNPOD_API_KEY="rp-key",
        RUNPOD_ENDPOINT_ID="ep1",
        STABILITY_BASE_URL=api.url,
    )
    services.jobs.register(job_id, "fal", "req-1", ("app_id", "fal-ai/flux"))
    api.respond("GET", "/v1/responses/resp_1", (200, {"id": "resp_1", "status": "queued"}))
    api.respond("GET", "/fal-ai/flux/requests/req-1/status", (200, {"status": "IN_QUEUE"}))
    api.respond("GET", "/v2/ep1/status/rp-1", (200, {"id": "rp-1", "status": "IN_QUEUE"}))
    api.respond("GET", "/v2beta/results/gen-1", (202, {"id": "gen-1", "status": "in-progress"}))

    for provider, external_id in (
        ("openai", "resp_1"),
        ("fal", "req-1"),
        ("runpod", "rp-1"),
        ("stability", "gen-1"),
    ):
        update = services.providers[provider].poll_job_status(JobRef(job_id, provider, external_id))
        assert update.status == "processing", provider

    assert paths(api) == [
        ("GET", "/v1/responses/resp_1"),
        ("GET", "/fal-ai/flux/requests/req-1/status"),
        ("GET", "/v2/ep1/status/rp-1"),
        ("GET", "/v2beta/results/gen-1"),
    ]


# -- providers that accept webhooks but cannot call their API ---------------------------

# Accepts webhooks from openai, replicate and runpod; no key for the first two, no
# endpoint id for RunPod.
CRIPPLED = {
    "OPENAI_API_KEY": "",
    "REPLICATE_API_KEY": "",
    "REPLICATE_API_TOKEN": "",
    "WEBHOOK_URL_SECRET_RUNPOD": RUNPOD_URL_SECRET,
    "RUNPOD_API_KEY": "rp-key-0123456789",
    "RUNPOD_ENDPOINT_ID": "",
}
EXPECTED_WARNINGS = (
    "provider openai: no OPENAI_API_KEY",
    "provider replicate: no REPLICATE_API_KEY (or REPLICATE_API_TOKEN)",
    "provider runpod: no RUNPOD_ENDPOINT_ID",
)


def check_config(**environ: str) -> str:
    run = CliRunner().invoke(main, ["check-config"], env=environ, catch_exceptions=False)
    assert run.exit_code == 0, run.output
    return run.output


def test_check_config_warns_of_providers_that_accept_webhooks_but_cannot_fetch_or_poll(
    redis_client,
):
    output = check_config(**CRIPPLED)

    warnings = [line for line in output.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == len(EXPECTED_WARNINGS), output
    for expected, line in zip(EXPECTED_WARNINGS, warnings, strict=True):
        assert line.startswith(f"WARNING {expected}:"), line


def test_check_config_warns_of_nothing_when_every_api_is_reachable(redis_client):
    reachable = {
        "OPENAI_API_KEY": "sk-x",
        "REPLICATE_API_TOKEN": "r8_x",
        "RUNPOD_ENDPOINT_ID": "ep1",
    }
    output = check_config(**{**CRIPPLED, **reachable})

    assert "WARNING" not in output, output


def test_a_provider_that_accepts_nothing_is_not_warned_about_its_key(redis_client):
    # fal without a JWKS URL accepts no webhooks: it is DISABLED, not a key problem
    output = check_config(FAL_API_KEY="", FAL_KEY="", WEBHOOK_JWKS_URL_FAL="")

    assert "provider fal: DISABLED" in output
    assert "WARNING provider fal" not in output


@pytest.mark.e2e
def test_web_and_worker_warn_at_start(own_redis):
    service = Service(own_redis.url, CRIPPLED)
    try:
        service.start_web()
        service.start_worker()
        for name in ("web", "worker"):
            log = service.logs / f"{name}.log"
            wait_for(
                lambda log=log: all(
                    w in log.read_text(errors="replace") for w in EXPECTED_WARNINGS
                ),
                timeout=60,
                message=f"the {name} process's start-up warnings ({log})",
            )
    finally:
        service.stop()


# -- a refused fetch is parked at once ----------------------------------------------------


@pytest.mark.parametrize("refusal", [401, 403])
def test_a_delivery_whose_fetch_is_refused_is_parked_at_once_as_provider_auth(
    services, client, worker, api, job_id, refusal
):
    response_id = new_id("resp_")
    services.jobs.register(job_id, "openai", response_id)
    api.respond(
        "GET",
        f"/v1/responses/{response_id}",
        (refusal, {"error": {"message": "Incorrect API key provided", "type": "invalid_request"}}),
    )
    event = {
        "object": "event",
        "id": new_id("evt_"),
        "type": "response.completed",
        "created_at": 1750287018,
        "data": {"id": response_id},
    }
    body = body_of(event)
    headers = signed_headers(OPENAI_SECRET, body)

    assert client.post("/webhook/openai", data=body, headers=headers).status_code == 202

    letter = wait_for(
        lambda: next(iter(services.dead_letters.list(provider="openai")), None),
        timeout=20,
        message="the delivery to be parked",
    )
    assert letter["reason"] == "provider_auth"
    assert letter["delivery_id"] == headers["webhook-id"]
    assert int(letter["attempts"]) == 1
    assert str(refusal) in letter["error"]
    assert api.calls("GET", f"/v1/responses/{response_id}") == 1
    assert not services.redis.exists(keys.job_state(job_id))


# -- POST /jobs: where a registered fal or RunPod job is polled ---------------------------


def register(client, admin_headers, **job):
    return client.post("/jobs", json=job, headers=admin_headers)


@pytest.fixture
def fal_app(services_with, api):
    services = services_with(FAL_BASE_URL=api.url, FAL_API_KEY="fal-key-0123456789")
    return services, client_for(services, None)


def test_a_fal_job_registered_with_its_app_id_is_polled(fal_app, api, admin_headers, job_id):
    services, client = fal_app
    request_id = str(uuid.uuid4())
    api.respond("GET", f"/fal-ai/flux/requests/{request_id}/status", (200, {"status": "COMPLETED"}))
    api.respond("GET", f"/fal-ai/flux/requests/{request_id}", (200, {"images": ["a.png"]}))

    answer = register(
        client,
        admin_headers,
        job_id=job_id,
        provider="fal",
        external_job_id=request_id,
        app_id="fal-ai/flux/dev",  # a model id: its status lives under the app
    )
    outcome = OrphanPoller(services).poll("fal", job_id)

    assert answer.status_code == 201, answer.get_json()
    assert answer.get_json()["app_id"] == "fal-ai/flux"
    assert services.jobs.mapping(job_id)["app_id"] == "fal-ai/flux"
    assert outcome is PollOutcome.APPLIED
    state = services.redis.hgetall(keys.job_state(job_id))
    assert (state["status"], state["source"]) == ("completed", "orphan_poll")


def test_a_fal_job_registered_without_an_app_id_is_registered_as_before(
    fal_app, admin_headers, job_id
):
    _, client = fal_app
    answer = register(
        client, admin_headers, job_id=job_id, provider="fal", external_job_id="req-plain"
    )

    assert answer.status_code == 201
    assert set(answer.get_json()) == {
        "registered",
        "created",
        "webhook_url",
        "job_id",
        "provider",
        "external_job_id",
    }


def test_a_runpod_job_registered_with_its_endpoint_id_is_polled_there(
    services_with, api, admin_headers, job_id
):
    services = services_with(
        RUNPOD_BASE_URL=f"{api.url}/v2", RUNPOD_API_KEY="rp-key", RUNPOD_ENDPOINT_ID="default-ep"
    )
    api.respond("GET", "/v2/other-ep/status/rp-9", (200, {"id": "rp-9", "status": "IN_PROGRESS"}))

    answer = register(
        client_for(services, None),
        admin_headers,
        job_id=job_id,
        provider="runpod",
        external_job_id="rp-9",
        endpoint_id="other-ep",
    )
    outcome = OrphanPoller(services).poll("runpod", job_id)

    assert answer.status_code == 201, answer.get_json()
    assert outcome is PollOutcome.APPLIED
    assert paths(api) == [("GET", "/v2/other-ep/status/rp-9")]


BAD_POLL_TARGETS = {
    "app_id-for-replicate": ({"provider": "replicate", "app_id": "fal-ai/flux"}, "app_id"),
    "endpoint_id-for-fal": ({"provider": "fal", "endpoint_id": "ep1"}, "endpoint_id"),
    "app_id-one-segment": ({"provider": "fal", "app_id": "flux"}, "app_id"),
    "app_id-climbing": ({"provider": "fal", "app_id": "fal-ai/../admin"}, "app_id"),
    "app_id-with-query": ({"provider": "fal", "app_id": "fal-ai/flux?x=1"}, "app_id"),
    "app_id-not-a-string": ({"provider": "fal", "app_id": 7}, "app_id"),
    "endpoint_id-with-slash": ({"provider": "runpod", "endpoint_id": "a/b"}, "endpoint_id"),
}


@pytest.mark.parametrize(("job", "field"), BAD_POLL_TARGETS.values(), ids=BAD_POLL_TARGETS)
def test_a_bad_poll_target_is_400_naming_the_field_and_writes_nothing(
    fal_app, admin_headers, job_id, job, field
):
    services, client = fal_app
    before = set(services.redis.keys("*"))

    answer = register(client, admin_headers, job_id=job_id, external_job_id="req-1", **job)

    assert answer.status_code == 400
    assert answer.get_json()["field"] == field
    assert field in answer.get_json()["error"]
    assert set(services.redis.keys("*")) == before


def test_another_app_id_for_a_registered_job_is_409(fal_app, admin_headers, job_id):
    services, client = fal_app
    job = {"job_id": job_id, "provider": "fal", "external_job_id": "req-2"}
    assert register(client, admin_headers, **job, app_id="fal-ai/flux").status_code == 201

    same = register(client, admin_headers, **job, app_id="fal-ai/flux")
    other = register(client, admin_headers, **job, app_id="fal-ai/other")

    assert same.status_code == 200
    assert other.status_code == 409
    assert services.jobs.mapping(job_id)["app_id"] == "fal-ai/flux"


def test_an_app_id_can_be_added_to_a_job_registered_without_one(fal_app, admin_headers, job_id):
    services, client = fal_app
    job = {"job_id": job_id, "provider": "fal", "external_job_id": "req-3"}
    assert register(client, admin_headers, **job).status_code == 201

    answer = register(client, admin_headers, **job, app_id="fal-ai/flux")

    assert answer.status_code == 200
    assert services.jobs.mapping(job_id)["app_id"] == "fal-ai/flux"


def test_an_app_id_written_into_the_mapping_by_another_service_is_used(
    fal_app, api, redis_client, job_id
):
    """Other services write mappings with a plain HSET: the field works there too."""
    services, _ = fal_app
    redis_client.hset(
        keys.job_mapping(job_id),
        mapping={"provider": "fal", "external_job_id": "req-4", "app_id": "fal-ai/flux"},
    )
    api.respond("GET", "/fal-ai/flux/requests/req-4/status", (200, {"status": "IN_PROGRESS"}))

    update = services.providers["fal"].poll_job_status(JobRef(job_id, "fal", "req-4"))

    assert update.status == "processing"

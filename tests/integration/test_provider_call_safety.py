"""Provider calls are safe (issue 15, item 6).

- Every id put into a provider URL is quoted as one path segment: an id with `/`,
  `..` or `?` reaches the local stand-in (tests.support.FakeProviderAPI) inside the
  path it belongs in, for Replicate, Stability, fal, RunPod and declarative polls.
  `POST /jobs` took any external id, so a mapping could aim a poll, sent with our
  API key, at another path of the provider's API.
- External ids are validated on registration: printable, no whitespace or control
  characters, at most 256 characters; otherwise 400 naming the field, nothing
  written.
- A declarative provider whose delivery id header is not covered by its signature
  (the shipped GitHub example) de-duplicates on the body's digest: a captured
  delivery sent again under a new id is `200 duplicate`.
- fal: `X-Fal-Webhook-User-Id` must be `FAL_USER_ID` when that is set (401 and
  nothing written otherwise); an `ERROR`'s `payload.detail` is kept in the job's
  error message.
"""

from __future__ import annotations

import json
import secrets
import uuid
from pathlib import Path

import pytest
import yaml

from tests.support import fal_headers, github_headers, jwks, new_ed25519_key
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.ingest import ingest
from webhook_ingest.providers import JobRef
from webhook_ingest.providers.http import ProviderError
from webhook_ingest.state import keys

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "providers.yaml"
JWKS_PATH = "/.well-known/jwks.json"

# What an id must not do to a URL, and each id as one quoted segment.
HOSTILE_IDS = {
    "climbing": ("../../v1/account", "..%2F..%2Fv1%2Faccount"),
    "slash": ("a/b", "a%2Fb"),
    "query": ("x?cancel=1#frag", "x%3Fcancel%3D1%23frag"),
    "percent": ("%2e%2e", "%252e%252e"),
}


def only_path(api) -> str:
    assert len(api.requests) == 1, [r["path"] for r in api.requests]
    return api.requests[0]["path"]


def poll(services, provider: str, external_id: str, job_id: str = "job-1"):
    """Ask the provider about a job; its answer (a 404 here) does not matter."""
    try:
        services.providers[provider].poll_job_status(JobRef(job_id, provider, external_id))
    except Exception:  # noqa: BLE001,S110 - the URL sent is what is checked
        pass


# -- ids are quoted into provider URLs ----------------------------------------------------


@pytest.mark.parametrize(("external_id", "quoted"), HOSTILE_IDS.values(), ids=HOSTILE_IDS)
def test_replicate_quotes_the_prediction_id(services_with, api, external_id, quoted):
    services = services_with(REPLICATE_BASE_URL=api.url)

    poll(services, "replicate", external_id)

    assert only_path(api) == f"/v1/predictions/{quoted}"


@pytest.mark.parametrize(("external_id", "quoted"), HOSTILE_IDS.values(), ids=HOSTILE_IDS)
def test_stability_quotes_the_generation_id(services_with, api, external_id, quoted):
    services = services_with(STABILITY_BASE_URL=api.url, STABILITY_API_KEY="sk-stability")

    poll(services, "stability", external_id)

    assert only_path(api) == f"/v2beta/results/{quoted}"


@pytest.mark.parametrize(("external_id", "quoted"), HOSTILE_IDS.values(), ids=HOSTILE_IDS)
def test_fal_quotes_the_request_id(services_with, api, job_id, external_id, quoted):
    services = services_with(FAL_BASE_URL=api.url, FAL_API_KEY="fal-key-0123456789")
    services.jobs.register(job_id, "fal", external_id, ("app_id", "fal-ai/flux"))

    poll(services, "fal", external_id, job_id)

    assert only_path(api) == f"/fal-ai/flux/requests/{quoted}/status"


@pytest.mark.parametrize(("external_id", "quoted"), HOSTILE_IDS.values(), ids=HOSTILE_IDS)
def test_runpod_quotes_the_job_id(services_with, api, external_id, quoted):
    services = services_with(
        RUNPOD_BASE_URL=f"{api.url}/v2", RUNPOD_API_KEY="rp-key", RUNPOD_ENDPOINT_ID="ep1"
    )

    poll(services, "runpod", external_id)

    assert only_path(api) == f"/v2/ep1/status/{quoted}"


@pytest.mark.parametrize(("external_id", "quoted"), HOSTILE_IDS.values(), ids=HOSTILE_IDS)
def test_a_declarative_poll_quotes_the_id(services_with, api, external_id, quoted):
    services = services_with(
        WEBHOOK_PROVIDERS_FILE=str(EXAMPLE),
        WEBHOOK_SECRET_GITHUB="gh-" + secrets.token_hex(20),
        GITHUB_TOKEN="github_pat_" + secrets.token_hex(16),
        GITHUB_BASE_URL=api.url,
    )

    poll(services, "github", external_id)

    assert only_path(api) == f"/repos/acme/widgets/actions/runs/{quoted}"


POLLERS = {
    "replicate": {"REPLICATE_BASE_URL": "{api}"},
    "stability": {"STABILITY_BASE_URL": "{api}"},
    "fal": {"FAL_BASE_URL": "{api}", "FAL_API_KEY": "fal-key"},
    "runpod": {"RUNPOD_BASE_URL": "{api}/v2", "RUNPOD_ENDPOINT_ID": "ep1"},
}


@pytest.mark.parametrize("external_id", [".", ".."], ids=["dot", "dot-dot"])
@pytest.mark.parametrize("provider", POLLERS)
def test_an_id_of_dots_is_never_sent(
    services_with, api, redis_client, job_id, provider, external_id
):
    """A dot segment survives no quoting (requests decodes %2E before sending, and
    the path is then resolved): such an id is refused, and nothing is sent."""
    services = services_with(**{k: v.format(api=api.url) for k, v in POLLERS[provider].items()})
    redis_client.hset(
        keys.job_mapping(job_id),
        mapping={"provider": provider, "external_job_id": external_id, "app_id": "fal-ai/flux"},
    )

    with pytest.raises(ProviderError, match="only dots"):
        services.providers[provider].poll_job_status(JobRef(job_id, provider, external_id))

    assert api.requests == []


def test_a_registered_id_cannot_aim_the_orphan_poll_elsewhere(
    services_with, client, api, admin_headers, job_id
):
    """The whole path: registered over HTTP, then polled by the orphan poller."""
    from webhook_ingest.operations.orphan_poller import OrphanPoller

    services = services_with(REPLICATE_BASE_URL=api.url)
    answer = client.post(
        "/jobs",
        json={"job_id": job_id, "provider": "replicate", "external_job_id": "../account"},
        headers=admin_headers,
    )
    assert answer.status_code == 201, answer.get_json()

    OrphanPoller(services).poll("replicate", job_id)

    assert only_path(api) == "/v1/predictions/..%2Faccount"


@pytest.mark.parametrize(
    ("provider", "params"),
    [
        ("replicate", {"model": "owner/name/../../../v1/account", "input": {}}),
        ("replicate", {"model": "owner/name?x=1", "input": {}}),
        ("stability", {"endpoint": "/v2beta/../../v1/user/account"}),
        ("stability", {"endpoint": "/v2beta/image-to-video?x=1"}),
    ],
    ids=["replicate-climbing", "replicate-query", "stability-climbing", "stability-query"],
)
def test_a_submit_path_that_would_leave_its_route_is_refused_unsent(
    services_with, api, job_id, provider, params
):
    from webhook_ingest.providers import JobRequest

    services = services_with(REPLICATE_BASE_URL=api.url, STABILITY_BASE_URL=api.url)

    with pytest.raises(ValueError, match="model|endpoint"):
        services.providers[provider].submit(JobRequest(job_id, params))

    assert api.requests == []


# -- external ids are validated on registration --------------------------------------------

BAD_EXTERNAL_IDS = {
    "space": "pred 1",
    "leading-space": " pred-1",
    "tab": "pred\t1",
    "newline": "pred-1\n",
    "nul": "pred\x001",
    "escape": "pred\x1b[31m",
    "zero-width-space": "pred\u200b1",
    "line-separator": "pred\u20281",
    "no-break-space": "pred\u00a01",
    "too-long": "p" * 257,
    "dot": ".",
    "dot-dot": "..",
}


@pytest.mark.parametrize("external_id", BAD_EXTERNAL_IDS.values(), ids=BAD_EXTERNAL_IDS)
def test_an_external_id_no_provider_would_give_is_400_and_writes_nothing(
    client, redis_client, admin_headers, job_id, external_id
):
    before = set(redis_client.keys("*"))

    answer = client.post(
        "/jobs",
        json={"job_id": job_id, "provider": "replicate", "external_job_id": external_id},
        headers=admin_headers,
    )

    assert answer.status_code == 400
    assert answer.is_json
    assert answer.get_json()["field"] == "external_job_id"
    error = answer.get_json()["error"]
    assert error.startswith("invalid field external_job_id: ")
    if len(external_id) > 2:  # (the message for dots names them)
        assert external_id not in error  # says what is wrong, does not echo the input
    assert set(redis_client.keys("*")) == before


@pytest.mark.parametrize(
    "external_id",
    [
        "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
        "x7q2ehbh3srme0cm2zgs6zwntm",
        "3f1b6f8a-3c1e-4f0e-9a53-54b1d6a2e0c4-u1",
        "30433642",
        "p" * 256,
        "ünïcode-id",
        "a/b",  # allowed: quoting, not refusal, keeps it in its segment
    ],
    ids=["openai", "replicate", "runpod", "github-run", "longest", "unicode", "slash"],
)
def test_ids_providers_give_are_registered(client, admin_headers, job_id, external_id):
    answer = client.post(
        "/jobs",
        json={"job_id": job_id, "provider": "replicate", "external_job_id": external_id},
        headers=admin_headers,
    )

    assert answer.status_code == 201, answer.get_json()


def test_the_registry_refuses_such_ids_from_any_caller(services, redis_client, job_id):
    from webhook_ingest.state.job_registry import InvalidExternalId

    with pytest.raises(InvalidExternalId, match="external_job_id must be printable"):
        services.jobs.register(job_id, "replicate", "pred 1")

    assert redis_client.keys("*") == []


# -- an unsigned delivery id does not make a delivery new -------------------------------


def github_config(tmp_path: Path, unsigned_header: bool) -> Path:
    """The shipped example, or the same provider naming its unsigned id header
    (as the example did before issue 15): either way the id is not signed."""
    if not unsigned_header:
        return EXAMPLE
    document = yaml.safe_load(EXAMPLE.read_text())
    document["providers"][0]["verification"]["delivery_id_header"] = "X-GitHub-Delivery"
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize("unsigned_header", [False, True], ids=["shipped-example", "id-header"])
def test_a_captured_github_delivery_replayed_under_a_new_id_is_a_duplicate(
    receiver_with, fake_api, tmp_path, unsigned_header
):
    secret = "gh-" + secrets.token_hex(20)
    stack = receiver_with(
        WEBHOOK_PROVIDERS_FILE=str(github_config(tmp_path, unsigned_header)),
        WEBHOOK_SECRET_GITHUB=secret,
        GITHUB_TOKEN="github_pat_" + secrets.token_hex(16),
        GITHUB_BASE_URL=fake_api.url,
    )
    run = {"id": 30433642, "status": "completed", "conclusion": "failure"}
    body = json.dumps({"action": "completed", "workflow_run": run}).encode()
    captured = github_headers(secret, body)
    replayed = {**captured, "X-GitHub-Delivery": str(uuid.uuid4())}

    first = stack.client.post("/webhook/github", data=body, headers=captured)
    again = stack.client.post("/webhook/github", data=body, headers=replayed)

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.get_json() == {"received": True, "duplicate": True}
    assert stack.queued() == 1


# -- fal: the account a delivery is for, and what an ERROR says --------------------------


@pytest.fixture
def fal_stack(receiver_with, fake_api):
    signer = new_ed25519_key()
    fake_api.respond("GET", JWKS_PATH, (200, jwks(signer)))
    stack = receiver_with(
        WEBHOOK_JWKS_URL_FAL=f"{fake_api.url}{JWKS_PATH}",
        FAL_BASE_URL=fake_api.url,
        FAL_USER_ID="user-ours",
    )
    return stack, signer


def fal_completion(request_id: str) -> bytes:
    return json.dumps({"request_id": request_id, "status": "OK", "payload": {"seed": 1}}).encode()


def test_a_fal_delivery_for_another_user_is_401_and_writes_nothing(fal_stack, job_id):
    stack, signer = fal_stack
    ours = str(uuid.uuid4())
    body = fal_completion(ours)
    # ours is accepted (and fills the key caches), so the snapshot below is settled
    accepted = stack.client.post(
        f"/webhook/fal/{job_id}", data=body, headers=fal_headers(signer, body, ours, "user-ours")
    )
    before = stack.snapshot()

    theirs = str(uuid.uuid4())
    body = fal_completion(theirs)
    refused = stack.client.post(
        f"/webhook/fal/{job_id}",
        data=body,
        headers=fal_headers(signer, body, theirs, "user-someone-else"),
    )

    assert accepted.status_code == 202
    assert refused.status_code == 401
    assert refused.get_json() == {"error": "verification failed: delivery is for another user"}
    assert stack.snapshot() == before
    assert stack.queued() == 1


def test_without_fal_user_id_any_users_signed_delivery_is_accepted(receiver_with, fake_api, job_id):
    signer = new_ed25519_key()
    fake_api.respond("GET", JWKS_PATH, (200, jwks(signer)))
    stack = receiver_with(WEBHOOK_JWKS_URL_FAL=f"{fake_api.url}{JWKS_PATH}", FAL_USER_ID=None)
    request_id = str(uuid.uuid4())
    body = fal_completion(request_id)

    answer = stack.client.post(
        f"/webhook/fal/{job_id}", data=body, headers=fal_headers(signer, body, request_id, "u-9")
    )

    assert answer.status_code == 202


VALIDATION_REPORT = [
    {"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}
]


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        (
            VALIDATION_REPORT,
            'Invalid status code: 422: [{"loc":["body","prompt"],"msg":"field required",'
            '"type":"value_error.missing"}]',
        ),
        ("Image size too large", "Invalid status code: 422: Image size too large"),
        ([], "Invalid status code: 422"),
    ],
    ids=["validation-report", "text", "empty"],
)
def test_a_fal_error_keeps_its_payload_detail(
    services_with, redis_client, job_id, detail, expected
):
    services = services_with()
    request_id = str(uuid.uuid4())
    services.jobs.register(job_id, "fal", request_id)
    body = json.dumps(
        {
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": "ERROR",
            "error": "Invalid status code: 422",
            "payload": {"detail": detail},
        }
    )

    ingest(Delivery("fal", request_id, body, job_id=job_id), services)

    state = redis_client.hgetall(keys.job_state(job_id))
    assert state["status"] == "failed"
    assert state["error_message"] == expected


def test_a_huge_fal_error_detail_is_cut(services_with, redis_client, job_id):
    services = services_with()
    request_id = str(uuid.uuid4())
    services.jobs.register(job_id, "fal", request_id)
    body = json.dumps(
        {
            "request_id": request_id,
            "status": "ERROR",
            "error": "bad",
            "payload": {"detail": "x" * 10**5},
        }
    )

    ingest(Delivery("fal", request_id, body, job_id=job_id), services)

    message = redis_client.hget(keys.job_state(job_id), "error_message")
    assert message.startswith("bad: xxx")
    assert len(message) < 2100

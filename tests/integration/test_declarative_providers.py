"""Declarative providers (WEBHOOK_PROVIDERS_FILE): a provider added by configuration.

- A bad file stops the process at start, and the error names the field.
- The GitHub-style provider of `examples/providers.yaml` (the file itself, copied
  to tmp_path) receives workflow runs: signed with Python's hmac the way GitHub
  documents it (`X-Hub-Signature-256: sha256=<hex>`; tests/support.py), verified by the
  receiver, queued on a private Redis, applied by a real worker process (e2e) or
  by calling `ingest` on the queued message.
- What every provider's webhook does (accepted, tampered, duplicate, rotation) is
  checked for the example's provider by tests/integration/test_provider_contract.py.
- Payloads map through the configured paths and status_map; an unmapped status is
  a PayloadError, which the worker parks.
- The orphan poller recovers a declarative provider's jobs from the fake API.

Apps here run on a redis-server of their own (state and broker), so their queued
deliveries never reach the shared in-process worker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import QUEUE, Receiver, environ_with, signed_headers, wait_for
from tests.support import github_headers as signed_as_github
from webhook_ingest.config import ConfigError, load_settings
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.ingest import IngestOutcome, ingest
from webhook_ingest.operations.orphan_poller import OrphanPoller, PollOutcome
from webhook_ingest.providers import JobRef, JobRequest, PayloadError, load_providers
from webhook_ingest.providers.declarative import DeclarativeProvider
from webhook_ingest.providers.http import ProviderError, ProviderNotFound
from webhook_ingest.state.job_registry import JobNotFound
from webhook_ingest.state.job_update import validated

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXAMPLE = ROOT / "examples" / "providers.yaml"

GITHUB_SECRET = "gh-" + secrets.token_hex(20)
GITHUB_TOKEN = "github_pat_" + secrets.token_hex(16)
ACME_SECRET = "acme-" + secrets.token_hex(20)
RUNS = "/repos/acme/widgets/actions/runs"  # the example's poll path


# -- files and environments -----------------------------------------------------------


def write(tmp_path: Path, document, name: str = "providers.yaml") -> Path:
    path = tmp_path / name
    if isinstance(document, str):
        path.write_text(document)
    elif name.endswith(".json"):
        path.write_text(json.dumps(document))
    else:
        path.write_text(yaml.safe_dump(document))
    return path


def declared(path: Path, **extra: str | None) -> dict[str, str | None]:
    """The variables a providers file and the providers in it read (None unsets)."""
    return {
        "WEBHOOK_PROVIDERS_FILE": str(path),
        "WEBHOOK_SECRET_GITHUB": GITHUB_SECRET,
        "GITHUB_TOKEN": GITHUB_TOKEN,
        "ACME_SECRET": ACME_SECRET,
        **extra,
    }


def environ_for(path: Path, redis_url: str | None = None, **extra: str | None) -> dict[str, str]:
    on = {"REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url} if redis_url else {}
    return environ_with(**declared(path, **on, **extra))


def providers_of(environ: dict[str, str]):
    return load_providers(load_settings(environ), environ)


def acme(**overrides) -> dict:
    """A minimal valid provider: HMAC-signed, job id and state under `job`.
    An override of None removes the field."""
    provider = {
        "name": "acme",
        "verification": {
            "scheme": "hmac",
            "secret_env": "ACME_SECRET",
            "signature_header": "X-Acme-Signature",
        },
        "external_id": "job.id",
        "status": "job.state",
        "status_map": {"running": "processing", "done": "completed", "error": "failed"},
    }
    provider.update(overrides)
    return {key: value for key, value in provider.items() if value is not None}


def with_verification(**changes) -> dict:
    verification = {**acme()["verification"], **changes}
    return acme(verification={k: v for k, v in verification.items() if v is not None})


def poll_of(**fields) -> dict:
    return acme(poll=fields)


# -- configuration errors name the field -------------------------------------------------

BAD_CONFIGS = {
    "unknown-top-level": ({"providers": [acme()], "extra": 1}, "extra: Unknown field"),
    "no-providers": ({"providers": []}, "providers: "),
    "unknown-field": ({"providers": [acme(colour="red")]}, "providers[0].colour: Unknown field"),
    "no-external-id": ({"providers": [acme(external_id=None)]}, "providers[0].external_id: "),
    "no-status-map": ({"providers": [acme(status_map=None)]}, "providers[0].status_map: "),
    "empty-status-map": ({"providers": [acme(status_map={})]}, "providers[0].status_map: "),
    "status-map-value": (
        {"providers": [acme(status_map={"done": "finished"})]},
        "providers[0].status_map.done.value: Must be one of: processing, completed, failed",
    ),
    "upper-case-name": ({"providers": [acme(name="Acme")]}, "providers[0].name: "),
    "name-with-slash": ({"providers": [acme(name="a/b")]}, "providers[0].name: "),
    "built-in-name": (
        {"providers": [acme(name="replicate")]},
        "providers[0].name: 'replicate' is a built-in provider",
    ),
    "declared-twice": ({"providers": [acme(), acme()]}, "providers[1].name: 'acme' is declared"),
    "second-provider": (
        {"providers": [acme(), acme(name="other", status="job..state")]},
        "providers[1].status: ",
    ),
    "path-not-text": ({"providers": [acme(status=5)]}, "providers[0].status: "),
    "empty-path-list": ({"providers": [acme(status=[])]}, "providers[0].status: "),
    "progress-scale": ({"providers": [acme(progress_scale=10)]}, "providers[0].progress_scale"),
    "unknown-scheme": (
        {"providers": [with_verification(scheme="md5")]},
        "providers[0].verification.scheme: must be one of",
    ),
    "no-verification": ({"providers": [acme(verification=None)]}, "providers[0].verification: "),
    "no-signature-header": (
        {"providers": [with_verification(signature_header=None)]},
        "providers[0].verification.signature_header: ",
    ),
    "bad-header-name": (
        {"providers": [with_verification(signature_header="X Sig")]},
        "providers[0].verification.signature_header: ",
    ),
    "algorithm": (
        {"providers": [with_verification(algorithm="sha1")]},
        "providers[0].verification.algorithm: ",
    ),
    "signed-content-without-body": (
        {"providers": [with_verification(signed_content="{timestamp}")]},
        "providers[0].verification.signed_content: ",
    ),
    "unsigned-timestamp": (
        {"providers": [with_verification(timestamp_header="X-T", signed_content="{body}")]},
        "providers[0].verification.signed_content: ",
    ),
    "secret-env-name": (
        {"providers": [with_verification(secret_env="1-BAD")]},
        "providers[0].verification.secret_env: ",
    ),
    "option-of-another-scheme": (
        {"providers": [acme(verification={"scheme": "bearer", "secret_env": "X"})]},
        "providers[0].verification.secret_env: Unknown field",
    ),
    "poll-without-id": (
        {"providers": [poll_of(url="https://api.acme.test/jobs", status="state")]},
        "providers[0].poll.url: must contain {external_job_id}",
    ),
    "poll-placeholder": (
        {"providers": [poll_of(url="https://x.test/{job}/{external_job_id}", status="s")]},
        "providers[0].poll.url: only {base_url} and {external_job_id}",
    ),
    "poll-unknown-field": (
        {"providers": [poll_of(url="https://x.test/{external_job_id}", status="s", verb="PUT")]},
        "providers[0].poll.verb: Unknown field",
    ),
    "poll-without-status": (
        {"providers": [poll_of(url="https://x.test/{external_job_id}")]},
        "providers[0].poll.status: ",
    ),
}


@pytest.mark.parametrize(("document", "expected"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_an_invalid_file_stops_the_start_naming_the_field(tmp_path, document, expected):
    path = write(tmp_path, document)

    with pytest.raises(ConfigError) as caught:
        providers_of(environ_for(path))

    message = str(caught.value)
    assert message.startswith(f"WEBHOOK_PROVIDERS_FILE ({path}): ")
    assert expected in message


def test_yaml_booleans_as_status_names_are_refused_not_misread(tmp_path):
    # YAML 1.1 reads an unquoted `on` as true: that entry would never match "on".
    path = write(
        tmp_path,
        "providers:\n- name: acme\n  verification: {scheme: bearer, token_env: ACME_SECRET}\n"
        "  external_id: id\n  status: s\n  status_map: {on: processing, 'off': failed}\n",
    )

    with pytest.raises(ConfigError, match=r"providers\[0\]\.status_map\.True\.key"):
        providers_of(environ_for(path))


def test_a_duplicated_yaml_key_is_refused_not_resolved_silently(tmp_path):
    path = write(tmp_path, "providers:\n- name: acme\n  status: a.b\n  status: c.d\n")

    with pytest.raises(ConfigError, match="duplicate key 'status'"):
        providers_of(environ_for(path))


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    text = (
        "providers:\n"
        "- name: acme\n"
        "  verification: {scheme: bearer, token_env: ACME_SECRET}\n"
        "  external_id: job.id\n"
        "  status: job.state\n"
        "  status_map:\n"
        "    <<: {running: processing, done: failed}\n"
        "    done: completed\n"
    )
    provider = providers_of(environ_for(write(tmp_path, text)))["acme"]

    assert dict(provider.spec.fields.status_map) == {"running": "processing", "done": "completed"}


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("providers.txt", "providers: []", "expected a .json, .yaml or .yml file"),
        ("providers.yaml", "providers: [\n", "does not parse"),
        ("providers.json", '{"providers": [}', "does not parse"),
        ("providers.json", '{"providers": [], "providers": []}', "duplicate key 'providers'"),
        ("providers.yml", "- name: acme\n", "expected a mapping with a providers list"),
    ],
    ids=["extension", "yaml-syntax", "json-syntax", "json-duplicate", "not-a-mapping"],
)
def test_an_unreadable_file_is_a_config_error(tmp_path, name, content, expected):
    path = write(tmp_path, content, name)

    with pytest.raises(ConfigError, match="WEBHOOK_PROVIDERS_FILE") as caught:
        providers_of(environ_for(path))

    assert expected in str(caught.value)


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        providers_of(environ_for(tmp_path / "nowhere.yaml"))


def test_json_files_work_like_yaml(tmp_path):
    path = write(tmp_path, {"providers": [acme()]}, "providers.json")

    assert isinstance(providers_of(environ_for(path))["acme"], DeclarativeProvider)


def test_without_the_variable_only_the_built_in_providers_load(tmp_path):
    environ = environ_for(tmp_path / "unused.yaml", WEBHOOK_PROVIDERS_FILE=None)

    assert not any(isinstance(p, DeclarativeProvider) for p in providers_of(environ).values())


def test_the_example_file_adds_github_beside_the_built_in_providers():
    providers = providers_of(environ_for(EXAMPLE))

    assert {"openai", "replicate", "github"} <= set(providers)
    assert providers["github"].enabled
    assert providers["github"].verifier.scheme == "hmac"
    assert providers["github"].configuration_hint == "WEBHOOK_SECRET_GITHUB"


@pytest.mark.parametrize(
    "unset", ["WEBHOOK_SECRET_GITHUB", "GITHUB_TOKEN"], ids=["secret", "poll-token"]
)
def test_a_variable_the_file_names_must_be_set(unset):
    with pytest.raises(ConfigError) as caught:
        providers_of(environ_for(EXAMPLE, **{unset: None}))

    assert "providers[0]" in str(caught.value)
    assert unset in str(caught.value)


def test_config_errors_never_show_a_secret():
    short = "short-secret"  # under the 16 characters an HMAC secret needs
    with pytest.raises(ConfigError) as caught:
        providers_of(environ_for(EXAMPLE, WEBHOOK_SECRET_GITHUB=f"{GITHUB_SECRET} {short}"))

    assert "WEBHOOK_SECRET_GITHUB" in str(caught.value)
    assert short not in str(caught.value)
    assert GITHUB_SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("poll", "extra", "expected"),
    [
        ({"url": "{base_url}/jobs/{external_job_id}"}, {}, "set base_url or ACME_BASE_URL"),
        ({"url": "http://api.acme.test/jobs/{external_job_id}"}, {}, "https://"),
        (
            {"url": "{base_url}/jobs/{external_job_id}"},
            {"ACME_BASE_URL": "http://api.acme.test"},
            "https://",
        ),
        (
            {"url": "https://api.acme.test/{external_job_id}", "auth_env": "ACME_POLL_TOKEN"},
            {},
            "ACME_POLL_TOKEN",
        ),
    ],
    ids=["no-base-url", "plain-http", "plain-http-from-env", "token-unset"],
)
def test_a_poll_that_could_not_work_stops_the_start(tmp_path, poll, extra, expected):
    path = write(tmp_path, {"providers": [poll_of(**poll, status="state")]})

    with pytest.raises(ConfigError, match=r"providers\[0\]") as caught:
        providers_of(environ_for(path, **extra))

    assert expected in str(caught.value)


def test_one_check_configured_twice_for_one_header_is_refused(tmp_path):
    verification = {"scheme": "bearer", "token_env": "ACME_SECRET"}
    path = write(tmp_path, {"providers": [acme(verification=verification)]})

    with pytest.raises(ConfigError, match="set one"):
        providers_of(environ_for(path, WEBHOOK_BEARER_TOKEN_ACME="another-token-0123456789"))


# -- the connector side -------------------------------------------------------------------


def test_a_declarative_provider_takes_webhooks_per_job_and_does_not_submit():
    environ = environ_for(EXAMPLE, WEBHOOK_BASE_URL="https://hooks.example.com")
    github = providers_of(environ)["github"]

    assert github.supports_webhooks()
    config = github.get_webhook_config("job-7")
    assert config.url == "https://hooks.example.com/webhook/github/job-7"
    assert config.auth == "hmac"
    with pytest.raises(NotImplementedError, match="POST /jobs"):
        github.submit(JobRequest("job-7", {}))


def test_a_url_token_provider_puts_its_first_token_into_the_webhook_url(tmp_path):
    token, old = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    verification = {"scheme": "url-token", "token_env": "ACME_URL_TOKEN"}
    path = write(tmp_path, {"providers": [acme(verification=verification)]})
    environ = environ_for(
        path, WEBHOOK_BASE_URL="https://hooks.example.com", ACME_URL_TOKEN=f"{token} {old}"
    )

    config = providers_of(environ)["acme"].get_webhook_config("job-7")

    assert config.url == f"https://hooks.example.com/webhook/acme/job-7/{token}"


def test_a_url_token_provider_gets_per_job_tokens_from_its_url_secret(tmp_path, receiver_with):
    """Issue 14, finding 7, for declarative providers: WEBHOOK_URL_SECRET_<NAME>
    makes the URL token the job's own (base64url of HMAC-SHA256(secret, job id))."""
    secret = secrets.token_urlsafe(32)
    verification = {"scheme": "url-token", "token_env": "WEBHOOK_URL_TOKEN_ACME"}
    path = write(tmp_path, {"providers": [acme(verification=verification)]})
    receiver = receiver_with(
        **declared(path, WEBHOOK_BASE_URL="https://hooks.example.com"),
        WEBHOOK_URL_SECRET_ACME=secret,
    )

    def token(job_id: str) -> str:
        mac = hmac.new(secret.encode(), job_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    url = receiver.services.providers["acme"].get_webhook_config("job-7").url
    body = json.dumps({"job": {"id": "a-1", "state": "done"}}).encode()

    assert url == f"https://hooks.example.com/webhook/acme/job-7/{token('job-7')}"
    assert receiver.client.post(f"/webhook/acme/job-7/{token('job-7')}", data=body).status_code == (
        202
    )
    assert receiver.client.post(f"/webhook/acme/job-8/{token('job-7')}", data=body).status_code == (
        401
    )


def test_a_url_secret_and_another_token_variable_are_refused_together(tmp_path):
    verification = {"scheme": "url-token", "token_env": "ACME_URL_TOKEN"}
    path = write(tmp_path, {"providers": [acme(verification=verification)]})
    environ = environ_for(
        path,
        ACME_URL_TOKEN=secrets.token_urlsafe(24),
        WEBHOOK_URL_SECRET_ACME=secrets.token_urlsafe(32),
    )

    with pytest.raises(ConfigError, match="WEBHOOK_URL_SECRET_ACME"):
        providers_of(environ)


# -- apps on a private Redis -------------------------------------------------------------


@pytest.fixture
def stack_for(receiver_with, fake_api):
    """`stack_for(path, **environ)`: the receiver and its services with the providers
    of `path`, on the module's private Redis; deliveries stay queued there."""

    def build(path: Path, **extra: str) -> Receiver:
        return receiver_with(**declared(path, GITHUB_BASE_URL=fake_api.url, **extra))

    return build


@pytest.fixture
def github_stack(stack_for, tmp_path):
    return stack_for(write(tmp_path, EXAMPLE.read_text()))


# -- GitHub, signed as GitHub signs --------------------------------------------------------


def workflow_run(run_id: int, status: str, conclusion: str | None = None) -> bytes:
    """A `workflow_run` event as GitHub sends it (abridged)."""
    action = {"completed": "completed", "in_progress": "in_progress"}.get(status, "requested")
    return json.dumps(
        {
            "action": action,
            "workflow_run": {
                "id": run_id,
                "name": "Build",
                "run_attempt": 1,
                "status": status,
                "conclusion": conclusion,
                "html_url": f"https://github.com/acme/widgets/actions/runs/{run_id}",
            },
            "workflow": {"id": 161335, "name": "Build"},
            "repository": {"full_name": "acme/widgets"},
        }
    ).encode()


def github_headers(body: bytes, delivery: str | None = None, secret: str = GITHUB_SECRET):
    """Signed as GitHub signs (tests.support.github_headers), by default with our secret."""
    return signed_as_github(secret, body, delivery)


def deliver(stack: Receiver, body: bytes, headers: dict, path: str = "/webhook/github"):
    return stack.client.post(path, data=body, headers=headers)


def test_a_workflow_run_is_received_and_applied_from_the_queued_message(github_stack, job_id):
    github_stack.register(job_id, "github", "30433642")

    for status, conclusion, expected in (
        ("queued", None, "processing"),
        ("in_progress", None, "processing"),
        ("completed", "success", "completed"),
    ):
        body = workflow_run(30433642, status, conclusion)
        assert deliver(github_stack, body, github_headers(body)).status_code == 202
        assert ingest(github_stack.take_queued(), github_stack.services).job_id == job_id
        assert github_stack.state(job_id)["status"] == expected

    state = github_stack.state(job_id)
    assert state["status"] == "completed"
    assert state["progress"] == "100"
    assert json.loads(state["result"]) == "https://github.com/acme/widgets/actions/runs/30433642"
    assert state["source"] == "webhook"


def test_the_per_job_url_works_too(github_stack, job_id):
    github_stack.register(job_id, "github", "78")
    body = workflow_run(78, "completed", "cancelled")

    answer = deliver(github_stack, body, github_headers(body), f"/webhook/github/{job_id}")
    ingest(github_stack.take_queued(), github_stack.services)

    assert answer.status_code == 202
    state = github_stack.state(job_id)
    assert state["status"] == "failed"
    assert state["error_message"] == "cancelled"


@pytest.mark.parametrize(
    "tamper",
    # a changed body is the provider contract's case (tests/integration/test_provider_contract.py)
    [
        lambda body, headers: (body, {**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}),
        lambda body, headers: (body, {k: v for k, v in headers.items() if "Signature" not in k}),
        lambda body, _: (body, github_headers(body, secret="not-the-secret-0123456789")),
    ],
    ids=["wrong-signature", "unsigned", "other-secret"],
)
def test_a_delivery_not_signed_with_the_secret_is_refused_and_not_queued(
    github_stack, job_id, tamper
):
    github_stack.register(job_id, "github", "79")
    signed = workflow_run(79, "completed", "success")
    body, headers = tamper(signed, github_headers(signed))

    answer = deliver(github_stack, body, headers)

    assert answer.status_code == 401
    assert GITHUB_SECRET not in answer.get_data(as_text=True)
    assert github_stack.redis.llen(QUEUE) == 0


def test_a_ping_is_recorded_as_ignored_not_parked(github_stack):
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1, "hook": {}}).encode()

    assert deliver(github_stack, body, github_headers(body)).status_code == 202
    result = ingest(github_stack.take_queued(), github_stack.services)

    assert result.outcome is IngestOutcome.IGNORED
    assert github_stack.redis.llen("webhook_ingest:ignored") == 1


def test_a_run_nobody_registered_waits_for_its_job(github_stack):
    body = workflow_run(404404, "completed", "success")
    deliver(github_stack, body, github_headers(body))

    # the task retries this, then parks it as unmatched
    with pytest.raises(JobNotFound, match="no job registered"):
        ingest(github_stack.take_queued(), github_stack.services)


# -- the mapping table ----------------------------------------------------------------------

MAPPED = acme(
    external_id=["job.id", "id"],
    status=["job.state"],
    status_map={
        "queued": "processing",
        "running": "processing",
        "done": "completed",
        "error": "failed",
        "cancelled": "failed",
        "7": "completed",
    },
    progress="job.fraction",
    progress_scale=1,
    result="job.output.0",
    error=["job.error.message", "job.error"],
)

# the payload's `job` object -> (status, progress, result, error_message) in job_state
MAPPINGS = {
    "queued-at-zero": ({"state": "queued", "fraction": 0}, ("processing", "0", None, None)),
    "running-fraction": ({"state": "running", "fraction": 0.29}, ("processing", "29", None, None)),
    "running-no-progress": ({"state": "running"}, ("processing", "0", None, None)),
    "done-first-output": (
        {"state": "done", "output": [{"url": "https://cdn/x.png"}, {"url": "https://cdn/y.png"}]},
        ("completed", "100", {"url": "https://cdn/x.png"}, None),
    ),
    "error-message": (
        {"state": "error", "error": {"message": "out of memory"}},
        ("failed", "0", None, "out of memory"),
    ),
    "error-text": ({"state": "error", "error": "GPU lost"}, ("failed", "0", None, "GPU lost")),
    "error-object": (
        {"state": "error", "error": {"code": 13}},
        ("failed", "0", None, '{"code":13}'),
    ),
    "error-without-message": ({"state": "cancelled"}, ("failed", "0", None, "cancelled")),
    "error-empty": ({"state": "error", "error": ""}, ("failed", "0", None, "error")),
    "numeric-status": ({"state": 7}, ("completed", "100", None, None)),
}


@pytest.fixture
def acme_stack(stack_for, tmp_path):
    return stack_for(write(tmp_path, {"providers": [MAPPED]}))


def acme_post(stack: Receiver, payload: dict, path: str):
    body = json.dumps(payload).encode()
    signature = hmac.new(ACME_SECRET.encode(), body, hashlib.sha256).hexdigest()
    answer = deliver(stack, body, {"X-Acme-Signature": signature}, path)
    assert answer.status_code == 202, answer.get_json()
    return stack.take_queued()


def acme_delivery(stack: Receiver, job_id: str, job: dict) -> Delivery:
    return acme_post(stack, {"job": {"id": "a-1", **job}}, f"/webhook/acme/{job_id}")


@pytest.mark.parametrize(("job", "expected"), MAPPINGS.values(), ids=MAPPINGS.keys())
def test_payloads_map_through_the_configured_paths(acme_stack, job_id, job, expected):
    acme_stack.register(job_id, "acme", "a-1")

    ingest(acme_delivery(acme_stack, job_id, job), acme_stack.services)

    state = acme_stack.state(job_id)
    status, progress, result, error_message = expected
    assert state["status"] == status
    assert state["progress"] == progress
    assert (json.loads(state["result"]) if state.get("result") else None) == result
    assert (state.get("error_message") or None) == error_message


def test_the_external_id_may_come_from_a_later_path(acme_stack, job_id):
    acme_stack.register(job_id, "acme", "top-level-id")
    delivery = acme_post(
        acme_stack, {"id": "top-level-id", "job": {"state": "done"}}, "/webhook/acme"
    )

    assert ingest(delivery, acme_stack.services).job_id == job_id


UNUSABLE = {
    "unmapped-status": ({"state": "paused"}, "not in status_map"),
    "no-status": ({"fraction": 0.5}, "payload has no job.state"),
    "status-is-object": ({"state": {"name": "done"}}, "not a string"),
    "progress-over-scale": ({"state": "running", "fraction": 1.5}, "outside 0-1"),
    "progress-not-number": ({"state": "running", "fraction": "50%"}, "not a number"),
    "id-not-text-or-number": ({"id": True, "state": "done"}, "job.id"),
}


@pytest.mark.parametrize(("job", "reason"), UNUSABLE.values(), ids=UNUSABLE.keys())
def test_a_payload_the_map_cannot_read_is_a_payload_error(acme_stack, job_id, job, reason):
    acme_stack.register(job_id, "acme", "a-1")
    delivery = acme_delivery(acme_stack, job_id, job)

    with pytest.raises(PayloadError, match=reason):
        ingest(delivery, acme_stack.services)

    assert acme_stack.state(job_id) == {}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["job", "id", "state", "fraction", "output", "error", "0"])
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


# Shaped like the mapped provider's payloads, each field anything: most make updates.
job_like = st.fixed_dictionaries(
    {
        "job": st.fixed_dictionaries(
            {
                "id": st.text(min_size=1, max_size=8) | json_values,
                "state": st.sampled_from(["done", "running", "error", "cancelled"]) | json_values,
            },
            optional={
                "fraction": st.floats(0, 1) | json_values,
                "output": st.lists(json_values, max_size=3) | json_values,
                "error": json_values,
            },
        )
    }
)
any_payload = job_like | st.dictionaries(
    st.sampled_from(["job", "id"]) | st.text(max_size=8), json_values
)


@pytest.fixture(scope="module")
def mapped_provider(tmp_path_factory):
    path = write(tmp_path_factory.mktemp("mapped"), {"providers": [MAPPED]})
    return providers_of(environ_for(path))["acme"]


@settings(max_examples=400, deadline=None)
@given(payload=any_payload)
def test_any_verified_payload_maps_or_is_a_payload_error(mapped_provider, payload):
    """What the worker can meet: an update, nothing, or a PayloadError (parked) - never a crash."""
    mapped_provider.waits_for_mapping(payload)
    try:
        external_id = mapped_provider.external_id(payload)
        update = mapped_provider.to_update(payload, JobRef("job-1", "acme", external_id))
    except PayloadError:
        return
    if update is not None:
        validated(update)  # what StateStore.apply checks before it writes


# -- other schemes, declared ----------------------------------------------------------------


def test_a_declared_standard_webhooks_provider_verifies_like_openai(stack_for, tmp_path, job_id):
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    verification = {"scheme": "standard-webhooks", "secret_env": "ACME_WHSEC"}
    path = write(tmp_path, {"providers": [acme(verification=verification)]})
    stack = stack_for(path, ACME_WHSEC=secret)
    stack.register(job_id, "acme", "a-1")
    body = json.dumps({"job": {"id": "a-1", "state": "done"}})
    url = f"/webhook/acme/{job_id}"

    good = stack.client.post(url, data=body, headers=signed_headers(secret, body))
    bad = stack.client.post(url, data=body + " ", headers=signed_headers(secret, body))

    assert (good.status_code, bad.status_code) == (202, 401)
    assert ingest(stack.take_queued(), stack.services).outcome is IngestOutcome.APPLIED


def test_a_declared_bearer_provider_needs_the_token(stack_for, tmp_path, job_id):
    token = secrets.token_urlsafe(24)
    verification = {"scheme": "bearer", "token_env": "ACME_TOKEN"}
    stack = stack_for(
        write(tmp_path, {"providers": [acme(verification=verification)]}), ACME_TOKEN=token
    )
    body = json.dumps({"job": {"id": "a-1", "state": "done"}})
    url = f"/webhook/acme/{job_id}"

    without = stack.client.post(url, data=body)
    wrong = stack.client.post(url, data=body, headers={"Authorization": "Bearer " + "x" * 32})
    right = stack.client.post(url, data=body, headers={"Authorization": f"Bearer {token}"})

    assert (without.status_code, wrong.status_code, right.status_code) == (401, 401, 202)


# -- the orphan poll --------------------------------------------------------------------


def run(run_id: int, status: str, conclusion: str | None = None) -> dict:
    """GET /repos/{owner}/{repo}/actions/runs/{id}: the run object (abridged)."""
    return {
        "id": run_id,
        "status": status,
        "conclusion": conclusion,
        "html_url": f"https://github.com/acme/widgets/actions/runs/{run_id}",
    }


def test_an_orphaned_run_is_recovered_by_polling_the_api(github_stack, api, job_id):
    github_stack.register(job_id, "github", "555")
    api.respond("GET", f"{RUNS}/555", (200, run(555, "completed", "failure")))

    outcome = OrphanPoller(github_stack.services).poll("github", job_id)

    assert outcome is PollOutcome.APPLIED
    state = github_stack.state(job_id)
    assert state["status"] == "failed"
    assert state["error_message"] == "failure"
    assert state["source"] == "orphan_poll"
    assert json.loads(state["result"]) == "https://github.com/acme/widgets/actions/runs/555"
    [poll] = api.requests
    assert poll["headers"]["Authorization"] == f"Bearer {GITHUB_TOKEN}"


def test_a_poll_of_a_running_job_keeps_it_processing(github_stack, api, job_id):
    api.respond("GET", f"{RUNS}/556", (200, run(556, "in_progress")))

    github = github_stack.services.providers["github"]
    update = github.poll_job_status(JobRef(job_id, "github", "556"))

    assert (update.status, update.source, update.external_job_id) == (
        "processing",
        "orphan_poll",
        "556",
    )


def test_a_run_the_api_does_not_know_is_not_found(github_stack, api, job_id):
    api.respond("GET", f"{RUNS}/557", (404, {"message": "Not Found"}))

    with pytest.raises(ProviderNotFound):
        github_stack.services.providers["github"].poll_job_status(JobRef(job_id, "github", "557"))


def test_the_external_id_cannot_leave_its_path_segment(github_stack, api, job_id):
    github = github_stack.services.providers["github"]

    with pytest.raises(ProviderNotFound):
        github.poll_job_status(JobRef(job_id, "github", "../../../user?x=1"))

    [poll] = api.requests
    assert poll["path"] == f"{RUNS}/..%2F..%2F..%2Fuser%3Fx%3D1"


@pytest.mark.parametrize(
    ("scale", "percent"), [(None, 0.4), (100, 40)], ids=["provider-scale", "own-scale"]
)
def test_a_poll_may_have_its_own_status_words_and_scale(
    stack_for, tmp_path, api, job_id, scale, percent
):
    poll = {
        "url": "{base_url}/v1/tasks/{external_job_id}",
        "status": "task.phase",
        "status_map": {"RUNNING": "processing", "SUCCEEDED": "completed"},
        "progress": "task.percent",
        **({"progress_scale": scale} if scale else {}),
    }
    provider = acme(progress="job.fraction", progress_scale=1, poll=poll)
    stack = stack_for(write(tmp_path, {"providers": [provider]}), ACME_BASE_URL=api.url)
    answer = {"task": {"phase": "RUNNING", "percent": percent}}
    api.respond("GET", "/v1/tasks/a-1", (200, answer))

    update = stack.services.providers["acme"].poll_job_status(JobRef(job_id, "acme", "a-1"))

    assert (update.status, update.progress) == ("processing", 40)


def test_a_provider_without_poll_says_its_jobs_wait_for_webhooks(stack_for, tmp_path, job_id):
    stack = stack_for(write(tmp_path, {"providers": [acme()]}))

    with pytest.raises(ProviderError, match="no poll configured"):
        stack.services.providers["acme"].poll_job_status(JobRef(job_id, "acme", "a-1"))


# -- end to end: the receiver, the broker and a real worker process -------------------------


class WorkerProcess:
    """`celery -A workers worker`, as the Procfile runs it, on the private Redis."""

    def __init__(self, environ: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as output:
            self.process = subprocess.Popen(
                [
                    str(BIN / "celery"),
                    "-A",
                    "workers",
                    "worker",
                    "--pool=solo",
                    "--loglevel=INFO",
                    f"--hostname=declarative-{uuid.uuid4().hex[:6]}@%h",
                ],
                cwd=ROOT,
                env=environ,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)


@pytest.mark.e2e
def test_a_github_delivery_reaches_job_state_through_a_real_worker(
    stack_for, private_redis, fake_api, tmp_path, job_id
):
    path = write(tmp_path, EXAMPLE.read_text())
    stack = stack_for(path)
    environ = environ_for(path, private_redis.url, GITHUB_BASE_URL=fake_api.url)
    worker = WorkerProcess(environ, tmp_path / "worker.log")
    try:
        stack.register(job_id, "github", "30433642")
        stack.register(f"{job_id}-2", "github", "30433643")
        for status, conclusion in (("in_progress", None), ("completed", "success")):
            body = workflow_run(30433642, status, conclusion)
            assert deliver(stack, body, github_headers(body)).status_code == 202
        # a conclusion nobody mapped: parked for the operator, not guessed
        unmapped = workflow_run(30433643, "completed", "a_conclusion_github_adds_later")
        assert deliver(stack, unmapped, github_headers(unmapped)).status_code == 202

        wait_for(
            lambda: stack.state(job_id).get("status") == "completed",
            timeout=60,
            message=f"the worker to apply the run ({worker.log})",
        )
        letters = wait_for(
            lambda: stack.services.dead_letters.list(), timeout=30, message="the parked delivery"
        )
        state = stack.state(job_id)
    finally:
        worker.stop()

    assert state["progress"] == "100"
    assert state["source"] == "webhook"
    assert json.loads(state["result"]) == "https://github.com/acme/widgets/actions/runs/30433642"
    [letter] = letters
    assert letter["reason"] == "PayloadError"
    assert "not in status_map" in letter["error"]
    assert letter["job_id"] == ""  # the project URL: the job was found from the run id
    assert GITHUB_SECRET not in (tmp_path / "worker.log").read_text()


# -- JSON files are strict JSON (strict_json, as deliveries are) --------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"providers": [{"progress_scale": NaN}]}', "NaN is not JSON"),
        ('{"providers": [{"progress_scale": -Infinity}]}', "-Infinity is not JSON"),
        ('{"providers": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ],
    ids=["nan", "infinity", "deeply-nested"],
)
def test_a_json_file_python_alone_would_take_is_a_config_error(tmp_path, content, expected):
    path = write(tmp_path, content, "providers.json")

    with pytest.raises(ConfigError, match="does not parse") as caught:
        providers_of(environ_for(path))

    assert expected in str(caught.value)

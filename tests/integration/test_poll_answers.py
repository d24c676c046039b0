"""Poll answers that end a job (issue 15, item 2; README "Orphan recovery").

A poll answer that is definitive ends the job with the provider's own reason:
Stability's 403 (content moderation) and 400 (invalid), fal's result request
answering the request's error (`error_type`). Transient answers (5xx, 429,
timeouts) back off, but no job is polled forever: after ORPHAN_GIVE_UP_SECONDS of
failing polls it is failed with a reason that says so, counted in
`webhook_orphans_given_up_total`. A provider that cannot poll (a declarative one
without a `poll` block) is never polled.

The provider APIs are the fake API server (tests.support.FakeProviderAPI)
answering in the documented shapes; time is passed to the poller as `now_ms`.
"""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest
import yaml
from prometheus_client import REGISTRY

from webhook_ingest.operations.orphan_poller import OrphanPoller, PollOutcome
from webhook_ingest.providers import JobRequest, http
from webhook_ingest.services import Services
from webhook_ingest.state import keys

AFTER_S, INTERVAL_S, GIVE_UP_S = 180, 30, 3600
AFTER, INTERVAL, GIVE_UP = AFTER_S * 1000, INTERVAL_S * 1000, GIVE_UP_S * 1000
FAL_API_KEY = "fal-key-" + uuid.uuid4().hex
ACME_SECRET = "acme-" + secrets.token_hex(20)


@pytest.fixture
def poller_services(services_with, api):
    """Services with the poller's times fixed here and fal's queue on the fake API."""

    def build(**extra: object) -> Services:
        return services_with(
            ORPHAN_AFTER_SECONDS=AFTER_S,
            ORPHAN_POLL_INTERVAL_SECONDS=INTERVAL_S,
            ORPHAN_GIVE_UP_SECONDS=GIVE_UP_S,
            FAL_BASE_URL=api.url,
            FAL_API_KEY=FAL_API_KEY,
            **extra,
        )

    return build


@pytest.fixture
def services(poller_services) -> Services:
    return poller_services()


@pytest.fixture
def poller(services) -> OrphanPoller:
    return OrphanPoller(services)


def state_of(redis_client, job_id: str) -> dict[str, str]:
    return redis_client.hgetall(keys.job_state(job_id))


def tracked(redis_client, provider: str, job_id: str) -> bool:
    return redis_client.zscore(keys.live_jobs(provider), job_id) is not None


def registered_at(redis_client, job_id: str) -> int:
    return int(redis_client.hget(keys.job_mapping(job_id), "created_at"))


def given_up(provider: str) -> float:
    value = REGISTRY.get_sample_value("webhook_orphans_given_up_total", {"provider": provider})
    return value or 0.0


def poll_until_settled(poller: OrphanPoller, provider: str, job_id: str, start: int, ticks: int):
    """Tick every interval and poll what is due, as beat and the worker would, from
    `start` for `ticks` ticks or until a poll settles the job; returns the outcomes
    and when each poll ran."""
    outcomes, moments, now = [], [], start
    for _ in range(ticks):
        due = poller.take_due(now_ms=now)
        if job_id in due.get(provider, []):
            outcome = poller.poll(provider, job_id, now_ms=now)
            outcomes.append(outcome)
            moments.append(now)
            if outcome is not PollOutcome.BACKING_OFF:
                break
        now += INTERVAL
    return outcomes, moments


# -- Stability: 403 content moderation and 400 end the job --------------------------

STABILITY_ENDINGS = {
    "content-moderation-403": (
        403,
        {
            "id": "a8f1c2e07b4d4f6e9c3b2a1d0e9f8c7b",
            "name": "content_moderation",
            "errors": [
                "Your request was flagged by our content moderation system, as a result your "
                "request was denied and you were not charged."
            ],
        },
        "content_moderation",
    ),
    "invalid-400": (
        400,
        {
            "id": "0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e",
            "name": "bad_request",
            "errors": ["id: must be a 64 character generation id"],
        },
        "bad_request",
    ),
}


@pytest.mark.parametrize(
    ("status", "answer", "name"), STABILITY_ENDINGS.values(), ids=STABILITY_ENDINGS.keys()
)
def test_a_stability_answer_that_ends_the_job_fails_it_with_stabilitys_reason(
    poller, services, redis_client, api, job_id, status, answer, name
):
    generation = uuid.uuid4().hex * 2
    path = f"/v2beta/results/{generation}"
    api.respond("GET", path, (status, answer))
    services.jobs.register(job_id, "stability", generation)
    stale = registered_at(redis_client, job_id) + AFTER

    outcomes, _ = poll_until_settled(poller, "stability", job_id, stale, ticks=2)

    assert outcomes == [PollOutcome.APPLIED]  # the first poll ends it
    state = state_of(redis_client, job_id)
    assert state["status"] == "failed"
    assert state["source"] == "orphan_poll"
    assert state["error_message"] == f"Stability AI: {name} (HTTP {status}): {answer['errors'][0]}"
    assert api.calls("GET", path) == 1
    assert not tracked(redis_client, "stability", job_id)
    assert not redis_client.exists(keys.POLL_FAILURES)
    # The job's events keep Stability's own word for it.
    [event] = services.state.events(job_id)
    assert (event["status"], event["provider_status"]) == ("failed", name)


def test_a_stability_403_without_a_body_still_says_content_moderation(
    poller, services, redis_client, api, job_id
):
    generation = uuid.uuid4().hex * 2
    api.respond("GET", f"/v2beta/results/{generation}", (403, []))
    services.jobs.register(job_id, "stability", generation)

    outcome = poller.poll("stability", job_id, now_ms=registered_at(redis_client, job_id) + AFTER)

    assert outcome is PollOutcome.APPLIED
    assert state_of(redis_client, job_id)["error_message"] == (
        "Stability AI: content moderation (HTTP 403)"
    )


def test_a_stability_401_is_not_the_jobs_end(poller, services, redis_client, api, job_id):
    """Our key, not the job: asked again (and given up on only after the bound)."""
    generation = uuid.uuid4().hex * 2
    api.respond("GET", f"/v2beta/results/{generation}", (401, {"name": "unauthorized"}))
    services.jobs.register(job_id, "stability", generation)

    outcome = poller.poll("stability", job_id, now_ms=registered_at(redis_client, job_id) + AFTER)

    assert outcome is PollOutcome.BACKING_OFF
    assert not state_of(redis_client, job_id)
    assert tracked(redis_client, "stability", job_id)


# -- fal: the result request answering the request's error --------------------------


def fal_request(services: Services, api, job_id: str) -> tuple[str, str]:
    """Submit a fal request through the connector against the fake queue; return its
    request id and the path of its result."""
    request_id = str(uuid.uuid4())
    webhook = f"{services.settings.webhook_base_url}/webhook/fal/{job_id}"
    submit = "/fal-ai/flux/dev?" + urlencode({"fal_webhook": webhook})
    api.respond(
        "POST",
        submit,
        (
            200,
            {
                "request_id": request_id,
                "status_url": f"{api.url}/fal-ai/flux/requests/{request_id}/status",
                "response_url": f"{api.url}/fal-ai/flux/requests/{request_id}",
            },
        ),
    )
    job = JobRequest(job_id, {"model": "fal-ai/flux/dev", "input": {"prompt": "a cat"}})
    assert services.providers["fal"].submit(job) == request_id
    services.jobs.register(job_id, "fal", request_id)
    result = f"/fal-ai/flux/requests/{request_id}"
    api.respond("GET", f"{result}/status", (200, {"status": "COMPLETED"}))
    return request_id, result


FAL_FAILURES = {
    "request-timeout-504": (
        (504, {"detail": "Request timed out", "error_type": "request_timeout"}),
        "request_timeout",
        "fal request failed (request_timeout): Request timed out",
    ),
    "runner-disconnected-503-header": (
        (
            503,
            {"detail": "The runner disconnected unexpectedly"},
            {"X-Fal-Error-Type": "runner_disconnected"},
        ),
        "runner_disconnected",
        "fal request failed (runner_disconnected): The runner disconnected unexpectedly",
    ),
    "runner-server-error-500": (
        (500, {"detail": "Internal server error", "error_type": "runner_server_error"}),
        "runner_server_error",
        "fal request failed (runner_server_error): Internal server error",
    ),
    "model-error-422": (
        (
            422,
            {
                "detail": [
                    {
                        "loc": ["body", "image_url"],
                        "msg": "Image dimensions are too large",
                        "type": "image_too_large",
                        "url": "https://docs.fal.ai/errors/#image_too_large",
                        "ctx": {"max_height": 1024, "max_width": 1024},
                    }
                ]
            },
        ),
        "image_too_large",
        "fal model error (image_too_large): Image dimensions are too large",
    ),
}


@pytest.mark.parametrize(
    ("answer", "error_type", "message"), FAL_FAILURES.values(), ids=FAL_FAILURES.keys()
)
def test_a_fal_result_answering_the_requests_error_fails_the_job_with_it(
    poller, services, redis_client, api, job_id, answer, error_type, message
):
    request_id, result = fal_request(services, api, job_id)
    api.respond("GET", result, answer)
    stale = registered_at(redis_client, job_id) + AFTER

    outcomes, _ = poll_until_settled(poller, "fal", job_id, stale, ticks=2)

    assert outcomes == [PollOutcome.APPLIED]
    state = state_of(redis_client, job_id)
    assert state["status"] == "failed"
    assert state["source"] == "orphan_poll"
    assert state["error_message"] == message
    assert state["external_job_id"] == request_id
    [event] = services.state.events(job_id)
    assert event["provider_status"] == error_type
    assert not tracked(redis_client, "fal", job_id)  # never asked again


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param((502, {"error": "bad gateway"}), id="gateway-502"),
        pytest.param((429, {"detail": "Too many requests"}, {"Retry-After": "1"}), id="429"),
        pytest.param((401, {"detail": "Unauthorized"}), id="our-key-401"),
    ],
)
def test_a_fal_result_error_of_the_queue_api_itself_is_asked_again(
    poller, services, redis_client, api, job_id, answer
):
    _, result = fal_request(services, api, job_id)
    api.respond("GET", result, answer)

    outcome = poller.poll("fal", job_id, now_ms=registered_at(redis_client, job_id) + AFTER)

    assert outcome is PollOutcome.BACKING_OFF
    assert not state_of(redis_client, job_id)
    assert tracked(redis_client, "fal", job_id)


# -- no job is polled forever ---------------------------------------------------------


FAILING = {
    "503": lambda api, path: api.respond("GET", path, (503, {"error": "unavailable"})),
    "429": lambda api, path: api.respond(
        "GET", path, (429, {"error": "rate limited"}, {"Retry-After": "120"})
    ),
    "timeout": lambda api, path: (
        api.respond("GET", path, (200, {"id": "x", "status": "in-progress"})),
        api.hold("GET", path, 1.0, times=100),
    ),
}


@pytest.mark.parametrize("failure", FAILING.values(), ids=FAILING.keys())
def test_polls_that_keep_failing_give_up_at_the_bound_with_a_reason_and_a_count(
    poller, services, redis_client, api, job_id, failure, monkeypatch
):
    monkeypatch.setattr(http, "READ_TIMEOUT", 0.2)  # a timeout in a fifth of a second
    prediction = f"pred_{uuid.uuid4().hex[:10]}"
    path = f"/v1/predictions/{prediction}"
    failure(api, path)
    services.jobs.register(job_id, "replicate", prediction)
    first = registered_at(redis_client, job_id) + AFTER
    before = given_up("replicate")

    outcomes, moments = poll_until_settled(poller, "replicate", job_id, first, ticks=200)

    print(
        f"\nfailing polls at (s after the first): {[(m - first) // 1000 for m in moments]}"
        f" -> {outcomes[-1].value}"
    )
    assert outcomes[-1] is PollOutcome.GAVE_UP
    assert set(outcomes[:-1]) == {PollOutcome.BACKING_OFF}
    assert 2 <= len(outcomes) <= 12  # backed off, not hammered
    # Given up at the bound: the last poll is the first tick at or after it.
    assert GIVE_UP <= moments[-1] - first < GIVE_UP + INTERVAL
    state = state_of(redis_client, job_id)
    assert state["status"] == "failed"
    assert state["source"] == "orphan_poll"
    message = state["error_message"]
    assert message.startswith(f"gave up polling replicate for job {prediction}: its polls failed")
    assert f"ORPHAN_GIVE_UP_SECONDS={GIVE_UP_S}" in message
    assert "last: " in message
    assert given_up("replicate") == before + 1
    assert not tracked(redis_client, "replicate", job_id)
    assert not redis_client.exists(keys.POLL_FAILURES)  # nothing left behind


def test_a_job_its_provider_cannot_be_asked_about_is_left_to_its_webhook_not_given_up(
    poller, services, redis_client, api, job_id
):
    """An OpenAI eval run cannot be fetched by its id alone: no poll is made, so no
    poll fails, and a day without its webhook does not fail it."""
    run_id = f"evalrun_{uuid.uuid4().hex}"
    services.jobs.register(job_id, "openai", run_id)
    first = registered_at(redis_client, job_id) + AFTER
    before = given_up("openai")

    outcomes, moments = poll_until_settled(poller, "openai", job_id, first, ticks=400)

    assert set(outcomes) == {PollOutcome.BACKING_OFF}
    assert moments[-1] - first > 2 * GIVE_UP  # looked at for longer than the bound ...
    assert len(outcomes) <= 2 * GIVE_UP // 3_600_000 + 3  # ... about once an hour
    assert not state_of(redis_client, job_id)
    assert tracked(redis_client, "openai", job_id)
    assert given_up("openai") == before
    assert api.requests == []


def test_one_good_answer_starts_the_give_up_clock_again(
    poller, services, redis_client, api, job_id
):
    prediction = f"pred_{uuid.uuid4().hex[:10]}"
    path = f"/v1/predictions/{prediction}"
    services.jobs.register(job_id, "replicate", prediction)
    first = registered_at(redis_client, job_id) + AFTER

    api.respond("GET", path, (503, {"error": "unavailable"}))
    assert poller.poll("replicate", job_id, now_ms=first) is PollOutcome.BACKING_OFF
    api.respond("GET", path, (200, {"id": prediction, "status": "processing", "logs": ""}))
    assert poller.poll("replicate", job_id, now_ms=first + GIVE_UP - 1) is PollOutcome.APPLIED
    api.respond("GET", path, (503, {"error": "unavailable"}))

    # Failing again from here: a fresh run of failures, not the old one's bound.
    assert poller.poll("replicate", job_id, now_ms=first + GIVE_UP) is PollOutcome.BACKING_OFF
    assert state_of(redis_client, job_id)["status"] == "processing"
    assert poller.poll("replicate", job_id, now_ms=first + 2 * GIVE_UP) is PollOutcome.GAVE_UP


def test_a_job_finished_by_a_webhook_forgets_when_its_polls_began_failing(
    poller, services, redis_client, api, job_id
):
    from webhook_ingest.state.job_update import JobStateUpdate

    prediction = f"pred_{uuid.uuid4().hex[:10]}"
    api.respond("GET", f"/v1/predictions/{prediction}", (503, {"error": "unavailable"}))
    services.jobs.register(job_id, "replicate", prediction)
    now = registered_at(redis_client, job_id) + AFTER
    assert poller.poll("replicate", job_id, now_ms=now) is PollOutcome.BACKING_OFF
    assert redis_client.hget(keys.POLL_FAILURES, f"{job_id}:failing_since") == str(now)

    services.state.apply(
        JobStateUpdate(job_id=job_id, status="completed", provider="replicate", source="webhook"),
        "msg-final",
    )

    assert not redis_client.exists(keys.POLL_FAILURES)


# -- only providers that can poll are polled ---------------------------------------------


def providers_file(tmp_path: Path) -> Path:
    """A declarative provider that receives webhooks and has no `poll` block."""
    path = tmp_path / "providers.yaml"
    acme = {
        "name": "acme",
        "verification": {
            "scheme": "hmac",
            "secret_env": "ACME_SECRET",
            "signature_header": "X-Acme-Signature",
        },
        "external_id": "job.id",
        "status": "job.state",
        "status_map": {"running": "processing", "done": "completed"},
    }
    path.write_text(yaml.safe_dump({"providers": [acme]}))
    return path


def test_a_declarative_provider_without_a_poll_block_is_never_polled(
    poller_services, redis_client, api, job_id, tmp_path
):
    services = poller_services(
        WEBHOOK_PROVIDERS_FILE=str(providers_file(tmp_path)), ACME_SECRET=ACME_SECRET
    )
    orphans = OrphanPoller(services)
    assert services.providers["acme"].can_poll() is False
    services.jobs.register(job_id, "acme", "a-1")
    registered = registered_at(redis_client, job_id)

    # Stale for long past every bound: never taken, so never polled nor given up on.
    for later in (AFTER, AFTER + INTERVAL, GIVE_UP, 2 * GIVE_UP, 30 * 24 * 3600 * 1000):
        assert orphans.take_due(now_ms=registered + later) == {}

    assert "acme" not in orphans.providers_scanned_per_tick
    assert not state_of(redis_client, job_id)
    assert tracked(redis_client, "acme", job_id)  # left to its webhook
    assert api.requests == []

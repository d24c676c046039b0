"""Connectors (issue 3, contract §2, §4, §5): submit with a webhook, map the job,
poll what never called back.

Every provider API here is the real fake HTTP server (tests.support.FakeProviderAPI):
the tests check what a provider would have received and what the rest of the job
system finds in Redis afterwards.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from contextlib import contextmanager
from email.utils import formatdate

import pytest
from celery.signals import task_retry

from tests.conftest import OPENAI_SECRET, REPLICATE_SECRET
from tests.support import body_of, signed_headers, wait_for
from webhook_ingest.handoff.publish import INGEST_TASK
from webhook_ingest.providers import JobRef, JobRequest, WebhookCapableConnector, load_providers
from webhook_ingest.providers.http import ProviderError, ProviderNotFound, ProviderUnavailable
from webhook_ingest.state import keys
from webhook_ingest.submission import JobConflict, submit_job

HOOKS = "https://hooks.example.com"
STABILITY_KEY = "sk-stability-test-key"


@pytest.fixture
def hooked(services_with, api):
    return services_with(WEBHOOK_BASE_URL=HOOKS)


@pytest.fixture
def keyed(services_with, api):
    return services_with(STABILITY_API_KEY=STABILITY_KEY)


def sent(api, method, path):
    return [r for r in api.requests if r["method"] == method and r["path"] == path]


def assert_mapped(redis_client, job_id, provider, external_id):
    mapping = redis_client.hgetall(keys.job_mapping(job_id))
    assert mapping["external_job_id"] == external_id
    assert mapping["provider"] == provider
    assert mapping["created_at"].isdigit()
    assert mapping["last_webhook_update"].isdigit()
    assert redis_client.get(keys.external_index(provider, external_id)) == job_id


def assert_not_mapped(redis_client, job_id):
    assert redis_client.exists(keys.job_mapping(job_id)) == 0
    assert redis_client.keys("webhook_ingest:external:*") == []


def tqdm(percent: int) -> str:
    return f"{percent:3d}%|{'#' * (percent // 10):<10}| {percent}/100 [00:01<00:01]\n"


# -- the interface --------------------------------------------------------------


def test_every_provider_is_a_webhook_capable_connector(services):
    providers = load_providers(services.settings)

    assert set(providers) >= {"openai", "replicate", "stability"}
    for name, provider in providers.items():
        assert isinstance(provider, WebhookCapableConnector), name
    assert providers["openai"].supports_webhooks() is True
    assert providers["replicate"].supports_webhooks() is True
    assert providers["stability"].supports_webhooks() is False
    assert providers["stability"].get_webhook_config("job-1") is None


def test_openai_webhook_config_is_the_project_level_url(hooked):
    openai = hooked.providers["openai"]

    config = openai.get_webhook_config("job-1")

    assert config.url == f"{HOOKS}/webhook/openai"
    assert openai.get_webhook_config("job-2") == config  # one URL for every job
    assert {
        "response.completed",
        "response.failed",
        "response.cancelled",
        "response.incomplete",
    } <= set(config.events)
    assert config.auth == "standard-webhooks"


def test_replicate_webhook_config_is_per_job(hooked):
    config = hooked.providers["replicate"].get_webhook_config("job-1")

    assert config.url == f"{HOOKS}/webhook/replicate/job-1"
    assert list(config.events) == ["start", "output", "logs", "completed"]
    assert config.auth == "standard-webhooks"


def test_webhook_base_url_defaults_to_localhost_on_port_8000(services_with):
    services = services_with(WEBHOOK_BASE_URL=None, PORT=None)

    assert services.providers["openai"].get_webhook_config("j").url == (
        "http://localhost:8000/webhook/openai"
    )
    assert services.providers["replicate"].get_webhook_config("j").url == (
        "http://localhost:8000/webhook/replicate/j"
    )


def test_webhook_base_url_defaults_to_localhost_on_the_receiver_port(services_with):
    services = services_with(WEBHOOK_BASE_URL=None, PORT="9123")

    assert services.providers["openai"].get_webhook_config("j").url == (
        "http://localhost:9123/webhook/openai"
    )


def test_a_trailing_slash_on_webhook_base_url_makes_no_double_slash(services_with):
    services = services_with(WEBHOOK_BASE_URL=f"{HOOKS}/")

    assert services.providers["openai"].get_webhook_config("j").url == f"{HOOKS}/webhook/openai"


# -- submit: OpenAI -------------------------------------------------------------


def test_openai_submit_starts_a_background_response_and_maps_it(
    services, api, redis_client, job_id
):
    api.respond("POST", "/v1/responses", (200, {"id": "resp_abc", "status": "queued"}))
    tools = [{"type": "image_generation", "partial_images": 2}]
    request = JobRequest(
        job_id,
        {"model": "gpt-5", "input": "draw a cat", "tools": tools, "metadata": {"team": "a"}},
    )

    external_id = submit_job(services, "openai", request)

    assert external_id == "resp_abc"
    [post] = sent(api, "POST", "/v1/responses")
    body = post["json"]
    assert body["background"] is True
    assert body["model"] == "gpt-5"
    assert body["input"] == "draw a cat"
    assert body["tools"] == tools
    assert body["metadata"] == {"team": "a", "job_id": job_id}
    assert post["headers"]["Authorization"] == "Bearer sk-test-key"
    assert len(api.requests) == 1
    # the mapping exists when submit_job returns: a racing webhook finds the job
    assert_mapped(redis_client, job_id, "openai", "resp_abc")
    assert redis_client.zscore(keys.live_jobs("openai"), job_id) is not None


def test_submitting_a_job_id_mapped_to_another_job_raises_a_conflict(
    services, api, redis_client, job_id
):
    services.jobs.register(job_id, "openai", "resp_old")
    api.respond("POST", "/v1/responses", (200, {"id": "resp_new"}))

    with pytest.raises(JobConflict):
        submit_job(services, "openai", JobRequest(job_id, {"model": "gpt-5", "input": "x"}))

    assert redis_client.hget(keys.job_mapping(job_id), "external_job_id") == "resp_old"
    assert redis_client.get(keys.external_index("openai", "resp_new")) is None


# -- submit: Replicate ----------------------------------------------------------


def test_replicate_submit_by_version_asks_for_our_webhook(hooked, api, redis_client, job_id):
    api.respond("POST", "/v1/predictions", (201, {"id": "pred-v", "status": "starting"}))
    params = {"version": "abc", "input": {"prompt": "a cat"}}

    external_id = submit_job(hooked, "replicate", JobRequest(job_id, params))

    assert external_id == "pred-v"
    [post] = sent(api, "POST", "/v1/predictions")
    assert post["json"]["version"] == "abc"
    assert post["json"]["input"] == {"prompt": "a cat"}
    assert post["json"]["webhook"] == f"{HOOKS}/webhook/replicate/{job_id}"
    assert post["json"]["webhook_events_filter"] == ["start", "output", "logs", "completed"]
    assert post["headers"]["Authorization"] == "Bearer r8_test_token"
    assert_mapped(redis_client, job_id, "replicate", "pred-v")


def test_replicate_submit_by_model_uses_the_model_predictions_route(
    hooked, api, redis_client, job_id
):
    api.respond(
        "POST", "/v1/models/owner/name/predictions", (201, {"id": "pred-m", "status": "starting"})
    )

    external_id = submit_job(
        hooked, "replicate", JobRequest(job_id, {"model": "owner/name", "input": {"seed": 1}})
    )

    assert external_id == "pred-m"
    [post] = sent(api, "POST", "/v1/models/owner/name/predictions")
    assert post["json"]["input"] == {"seed": 1}
    assert post["json"]["webhook"] == f"{HOOKS}/webhook/replicate/{job_id}"
    assert post["json"]["webhook_events_filter"] == ["start", "output", "logs", "completed"]
    assert post["headers"]["Authorization"] == "Bearer r8_test_token"
    assert len(api.requests) == 1
    assert_mapped(redis_client, job_id, "replicate", "pred-m")


def test_replicate_submit_without_version_or_model_sends_nothing(
    services, api, redis_client, job_id
):
    with pytest.raises(ValueError):
        submit_job(services, "replicate", JobRequest(job_id, {"input": {"prompt": "x"}}))

    assert api.requests == []
    assert_not_mapped(redis_client, job_id)


# -- submit: Stability ----------------------------------------------------------


def test_stability_submit_posts_multipart_and_maps_the_generation(keyed, api, redis_client, job_id):
    api.respond("POST", "/v2beta/image-to-video", (200, {"id": "gen-123"}))
    params = {"endpoint": "/v2beta/image-to-video", "data": {"seed": "1"}}

    external_id = submit_job(keyed, "stability", JobRequest(job_id, params))

    assert external_id == "gen-123"
    [post] = sent(api, "POST", "/v2beta/image-to-video")
    assert post["headers"]["Content-Type"].startswith("multipart/form-data; boundary=")
    assert post["json"] is None
    assert b'name="seed"\r\n\r\n1\r\n' in post["body"]
    assert post["headers"]["Authorization"] == f"Bearer {STABILITY_KEY}"
    assert_mapped(redis_client, job_id, "stability", "gen-123")


# -- submit: never retried on an answer ------------------------------------------

SUBMITS = {
    "openai": ("/v1/responses", {"model": "gpt-5", "input": "x"}),
    "replicate": ("/v1/predictions", {"version": "abc", "input": {}}),
    "stability": ("/v2beta/image-to-video", {"endpoint": "/v2beta/image-to-video"}),
}


@pytest.mark.parametrize("provider", sorted(SUBMITS))
@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_submit_answered_with_a_transient_error_is_not_retried(
    keyed, api, redis_client, job_id, provider, status
):
    path, params = SUBMITS[provider]
    api.respond(
        "POST",
        path,
        (status, {"error": "try later"}, {"Retry-After": "5"}),
        (201, {"id": "would-duplicate"}),
    )

    with pytest.raises(ProviderUnavailable) as raised:
        submit_job(keyed, provider, JobRequest(job_id, params))

    assert raised.value.status == status
    assert raised.value.retry_after == 5  # for the caller to decide when to ask again
    assert api.calls("POST", path) == 1  # a lost answer may still have started a job
    assert len(api.requests) == 1
    assert_not_mapped(redis_client, job_id)


@pytest.mark.parametrize("provider", sorted(SUBMITS))
def test_a_submit_answered_400_is_a_provider_error_after_one_request(
    keyed, api, redis_client, job_id, provider
):
    path, params = SUBMITS[provider]
    api.respond("POST", path, (400, {"error": "bad input"}), (201, {"id": "never"}))

    with pytest.raises(ProviderError) as raised:
        submit_job(keyed, provider, JobRequest(job_id, params))

    assert not isinstance(raised.value, ProviderUnavailable)  # retrying will not help
    assert api.calls("POST", path) == 1
    assert_not_mapped(redis_client, job_id)


# -- poll_job_status ------------------------------------------------------------


def test_openai_poll_of_a_completed_response(services, api, job_id):
    output = [{"type": "image_generation_call", "result": "aGVsbG8="}]
    api.respond(
        "GET",
        "/v1/responses/resp_done",
        (200, {"id": "resp_done", "object": "response", "status": "completed", "output": output}),
    )

    update = services.providers["openai"].poll_job_status(JobRef(job_id, "openai", "resp_done"))

    assert update.status == "completed"
    assert update.result == output
    assert update.source == "orphan_poll"
    assert (update.job_id, update.provider, update.external_job_id) == (
        job_id,
        "openai",
        "resp_done",
    )
    [get] = sent(api, "GET", "/v1/responses/resp_done")
    assert get["headers"]["Authorization"] == "Bearer sk-test-key"


def test_openai_poll_of_a_response_in_progress(services, api, job_id):
    api.respond("GET", "/v1/responses/resp_run", (200, {"id": "resp_run", "status": "in_progress"}))

    update = services.providers["openai"].poll_job_status(JobRef(job_id, "openai", "resp_run"))

    assert update.status == "processing"
    assert update.source == "orphan_poll"
    assert update.result is None
    assert update.error_message is None


def test_replicate_poll_of_a_processing_prediction_reads_progress_from_logs(services, api, job_id):
    prediction = {"id": "pred-p", "status": "processing", "logs": tqdm(10) + tqdm(37)}
    api.respond("GET", "/v1/predictions/pred-p", (200, prediction))

    update = services.providers["replicate"].poll_job_status(JobRef(job_id, "replicate", "pred-p"))

    assert update.status == "processing"
    assert update.progress == 37
    assert update.source == "orphan_poll"
    assert update.external_job_id == "pred-p"
    [get] = sent(api, "GET", "/v1/predictions/pred-p")
    assert get["headers"]["Authorization"] == "Bearer r8_test_token"


def test_replicate_poll_of_a_succeeded_prediction(services, api, job_id):
    prediction = {"id": "pred-s", "status": "succeeded", "output": ["https://x/out.png"]}
    api.respond("GET", "/v1/predictions/pred-s", (200, prediction))

    update = services.providers["replicate"].poll_job_status(JobRef(job_id, "replicate", "pred-s"))

    assert update.status == "completed"
    assert update.result == ["https://x/out.png"]
    assert update.source == "orphan_poll"


def test_stability_poll_while_the_generation_runs(keyed, api, job_id):
    api.respond("GET", "/v2beta/results/gen-1", (202, {"id": "gen-1", "status": "in-progress"}))

    update = keyed.providers["stability"].poll_job_status(JobRef(job_id, "stability", "gen-1"))

    assert update.status == "processing"
    assert update.source == "orphan_poll"
    assert (update.job_id, update.provider, update.external_job_id) == (
        job_id,
        "stability",
        "gen-1",
    )
    [get] = sent(api, "GET", "/v2beta/results/gen-1")
    assert get["headers"]["Accept"] == "application/json"
    assert get["headers"]["Authorization"] == f"Bearer {STABILITY_KEY}"


def test_stability_poll_of_a_finished_generation(keyed, api, job_id):
    done = {
        "image": base64.b64encode(b"\x89PNG fake").decode(),
        "finish_reason": "SUCCESS",
        "seed": 1,
    }
    api.respond("GET", "/v2beta/results/gen-2", (200, done))

    update = keyed.providers["stability"].poll_job_status(JobRef(job_id, "stability", "gen-2"))

    assert update.status == "completed"
    assert update.result["image"] == done["image"]
    assert update.result["seed"] == 1
    assert update.source == "orphan_poll"


def test_stability_poll_of_a_content_filtered_generation_is_a_failure(keyed, api, job_id):
    filtered = {"image": "", "finish_reason": "CONTENT_FILTERED", "seed": 1}
    api.respond("GET", "/v2beta/results/gen-3", (200, filtered))

    update = keyed.providers["stability"].poll_job_status(JobRef(job_id, "stability", "gen-3"))

    assert update.status == "failed"
    assert update.error_message
    assert update.source == "orphan_poll"


def test_stability_poll_of_an_unknown_generation_is_not_found(keyed, api, job_id):
    api.respond("GET", "/v2beta/results/gen-gone", (404, {"name": "not_found"}))

    with pytest.raises(ProviderNotFound):
        keyed.providers["stability"].poll_job_status(JobRef(job_id, "stability", "gen-gone"))


# -- poll HTTP: retries of idempotent calls ----------------------------------------

POLLS = {
    "openai": ("/v1/responses/ext-1", {"id": "ext-1", "status": "completed", "output": []}),
    "replicate": ("/v1/predictions/ext-1", {"id": "ext-1", "status": "succeeded", "output": 1}),
    "stability": ("/v2beta/results/ext-1", {"image": "eA==", "finish_reason": "SUCCESS"}),
}


@pytest.mark.parametrize("provider", sorted(POLLS))
@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_poll_answered_5xx_is_retried_once_inside_the_call(keyed, api, job_id, provider, status):
    path, answer = POLLS[provider]
    api.respond("GET", path, (status, {"error": "oops"}), (200, answer))

    update = keyed.providers[provider].poll_job_status(JobRef(job_id, provider, "ext-1"))

    assert update.status == "completed"
    assert api.calls("GET", path) == 2


@pytest.mark.parametrize("provider", sorted(POLLS))
def test_a_poll_answered_5xx_twice_is_unavailable(keyed, api, job_id, provider):
    path, answer = POLLS[provider]
    api.respond("GET", path, (500, {}), (503, {}, {"Retry-After": "3"}), (200, answer))

    with pytest.raises(ProviderUnavailable) as raised:
        keyed.providers[provider].poll_job_status(JobRef(job_id, provider, "ext-1"))

    assert raised.value.status == 503
    assert api.calls("GET", path) == 2


@pytest.mark.parametrize("provider", sorted(POLLS))
def test_a_poll_answered_429_is_not_slept_on(keyed, api, job_id, provider):
    path, answer = POLLS[provider]
    api.respond("GET", path, (429, {"error": "slow down"}, {"Retry-After": "7"}), (200, answer))

    with pytest.raises(ProviderUnavailable) as raised:
        keyed.providers[provider].poll_job_status(JobRef(job_id, provider, "ext-1"))

    assert raised.value.retry_after == 7
    assert raised.value.status == 429
    assert api.calls("GET", path) == 1  # the wait becomes the caller's countdown


def test_a_retry_after_given_as_an_http_date_is_honoured(keyed, api, job_id):
    path, answer = POLLS["openai"]
    when = formatdate(time.time() + 120, usegmt=True)
    api.respond("GET", path, (429, {"error": "slow down"}, {"Retry-After": when}), (200, answer))

    with pytest.raises(ProviderUnavailable) as raised:
        keyed.providers["openai"].poll_job_status(JobRef(job_id, "openai", "ext-1"))

    assert raised.value.retry_after is not None
    assert 60 <= raised.value.retry_after <= 120


# -- a webhook that races the submit ---------------------------------------------


@contextmanager
def ingest_retries():
    """Delivery ids of ingest tasks the in-process worker scheduled for a retry."""
    seen: list[str] = []

    def on_retry(sender=None, request=None, **_):
        if getattr(sender, "name", None) == INGEST_TASK and request and request.args:
            seen.append(request.args[0].get("delivery_id"))

    task_retry.connect(on_retry, weak=False)
    try:
        yield seen
    finally:
        task_retry.disconnect(on_retry)


def settled(redis_client, job_id, status):
    def state():
        current = redis_client.hgetall(keys.job_state(job_id))
        return current if current.get("status") == status else None

    return wait_for(state, message=f"{job_id} to be {status}")


def test_an_openai_webhook_that_beats_the_submit_is_matched(
    services, client, worker, api, redis_client, job_id
):
    response_id = f"resp_{uuid.uuid4().hex[:10]}"
    output = [{"type": "image_generation_call", "result": "Y2F0"}]
    api.respond(
        "GET",
        f"/v1/responses/{response_id}",
        (200, {"id": response_id, "status": "completed", "output": output}),
    )
    api.respond("POST", "/v1/responses", (200, {"id": response_id, "status": "queued"}))
    event = {
        "object": "event",
        "id": f"evt_{uuid.uuid4().hex}",
        "type": "response.completed",
        "created_at": 1750287018,
        "data": {"id": response_id},
    }
    body = body_of(event)
    headers = signed_headers(OPENAI_SECRET, body)

    with ingest_retries() as retried:
        answer = client.post("/webhook/openai", data=body, headers=headers)
        assert answer.status_code == 202, answer.get_json()
        # the worker saw the delivery before any mapping existed, and will try again
        wait_for(lambda: headers["webhook-id"] in retried, message="an unmatched retry")
        assert not redis_client.exists(keys.job_state(job_id))

        submit_job(services, "openai", JobRequest(job_id, {"model": "gpt-5", "input": "a cat"}))

        state = settled(redis_client, job_id, "completed")

    assert state["source"] == "webhook"
    assert state["external_job_id"] == response_id
    assert json.loads(state["result"]) == output
    paths = [(r["method"], r["path"]) for r in api.requests]
    assert paths.index(("POST", "/v1/responses")) < paths.index(
        ("GET", f"/v1/responses/{response_id}")
    )
    assert services.dead_letters.count() == 0


def test_a_replicate_webhook_that_beats_the_submit_is_matched(
    services, client, worker, api, redis_client, job_id
):
    prediction_id = f"pred-{uuid.uuid4().hex[:10]}"
    api.respond("POST", "/v1/predictions", (201, {"id": prediction_id, "status": "starting"}))
    body = body_of({"id": prediction_id, "status": "succeeded", "output": ["out.png"]})
    headers = signed_headers(REPLICATE_SECRET, body)

    with ingest_retries() as retried:
        answer = client.post(f"/webhook/replicate/{job_id}", data=body, headers=headers)
        assert answer.status_code == 202, answer.get_json()
        wait_for(lambda: headers["webhook-id"] in retried, message="an unmatched retry")
        assert not redis_client.exists(keys.job_state(job_id))

        submit_job(services, "replicate", JobRequest(job_id, {"version": "abc", "input": {}}))

        state = settled(redis_client, job_id, "completed")

    assert state["source"] == "webhook"
    assert state["external_job_id"] == prediction_id
    assert json.loads(state["result"]) == ["out.png"]
    assert services.dead_letters.count() == 0

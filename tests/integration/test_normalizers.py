"""Provider payloads become JobStateUpdates as the tables of providers.md say.

Replicate's payload is the prediction itself. OpenAI's event names only the
object id, so the OpenAI provider fetches it where its family lives (`GET
{base}/responses/{id}`, `/batches/{id}`, ...; tests/integration/test_openai_families.py
has the families' own shapes) from the fake provider API (a real HTTP server)
before mapping.
"""

from __future__ import annotations

import pytest

from webhook_ingest.config import load_settings
from webhook_ingest.providers import JobRef, PayloadError
from webhook_ingest.providers.http import ProviderUnavailable
from webhook_ingest.providers.replicate import ReplicateProvider, progress_from_logs
from webhook_ingest.state.job_update import COMPLETED, FAILED, PROCESSING


def tqdm(percent: int, total: int = 50) -> str:
    done = percent * total // 100
    return f"{percent:3d}%|{'█' * (percent // 10):<10}| {done}/{total} [00:04<00:05, 9.81it/s]\n"


def completed_means_100(progress) -> bool:
    # `completed` means 100 (contract §4): the update may say so, or leave it to the store.
    return progress in (None, 100)


# == Replicate ===========================================================================

REPLICATE_JOB = JobRef(job_id="job-r1", provider="replicate", external_job_id="pred_abc")


@pytest.fixture(scope="module")
def replicate():
    return ReplicateProvider(load_settings({}), environ={})


def prediction(status, **fields):
    return {"id": "pred_abc", "status": status, "logs": "", "output": None, "error": None, **fields}


@pytest.mark.parametrize(
    ("payload", "status", "progress", "result", "error_message"),
    [
        (prediction("starting"), PROCESSING, 0, None, None),
        (prediction("processing", logs="loading\n" + tqdm(42)), PROCESSING, 42, None, None),
        (prediction("processing", logs="Using seed: 1234\n"), PROCESSING, None, None, None),
        (prediction("processing", logs=None), PROCESSING, None, None, None),
        (
            prediction("succeeded", output=["https://replicate.delivery/x/out-0.webp"]),
            COMPLETED,
            completed_means_100,
            ["https://replicate.delivery/x/out-0.webp"],
            None,
        ),
        (
            prediction("failed", error="CUDA out of memory"),
            FAILED,
            None,
            None,
            "CUDA out of memory",
        ),
        (prediction("canceled"), FAILED, None, None, "canceled"),
        (prediction("aborted"), FAILED, None, None, "aborted"),
    ],
    ids=[
        "starting",
        "processing with tqdm logs",
        "processing without tqdm",
        "processing logs null",
        "succeeded",
        "failed",
        "canceled",
        "aborted",
    ],
)
def test_replicate_prediction_statuses_map_as_documented(
    replicate, payload, status, progress, result, error_message
):
    update = replicate.to_update(payload, REPLICATE_JOB)

    assert (update.status, update.result, update.error_message) == (status, result, error_message)
    if callable(progress):
        assert progress(update.progress)
    else:
        assert update.progress == progress
    assert (update.job_id, update.external_job_id) == ("job-r1", "pred_abc")
    assert (update.provider, update.source) == ("replicate", "webhook")


def test_a_replicate_failure_without_error_text_still_says_it_failed(replicate):
    update = replicate.to_update(prediction("failed", error=None), REPLICATE_JOB)

    assert update.status == FAILED
    assert update.error_message


@pytest.mark.parametrize(
    ("logs", "progress"),
    [
        (tqdm(10) + tqdm(55), 55),  # the last match wins
        (tqdm(80) + "saving output\n" + tqdm(30), 30),  # last, not highest
        ("Downloading weights: 50% done\n" + tqdm(30) + "step 3 of 5\n", 30),
        ("  7%|▋         | 7/100 [00:01<00:13,  6.92it/s]", 7),
        (tqdm(100), 100),
        ("100% done\n50/50\n", None),  # looks like progress, is not tqdm
        ("", None),
        (None, None),
        (42, None),
        (["  7%|▋ | 7/100"], None),
    ],
)
def test_replicate_progress_comes_from_the_last_tqdm_line(logs, progress):
    assert progress_from_logs(logs) == progress


@pytest.mark.parametrize("status", ["queued", "running", "", None, 3])
def test_an_unknown_replicate_status_is_a_payload_error(replicate, status):
    with pytest.raises(PayloadError):
        replicate.to_update(prediction(status), REPLICATE_JOB)


@pytest.mark.parametrize("payload", [{"status": "starting"}, {"id": "", "status": "starting"}])
def test_a_replicate_payload_without_id_is_a_payload_error(replicate, payload):
    with pytest.raises(PayloadError):
        replicate.external_id(payload)
    with pytest.raises(PayloadError):
        replicate.to_update(payload, REPLICATE_JOB)


def test_the_replicate_external_id_is_the_prediction_id(replicate):
    assert replicate.external_id(prediction("starting")) == "pred_abc"


# == OpenAI ============================================================================

OPENAI_JOB = JobRef(job_id="job-o1", provider="openai", external_job_id="resp_1")
RESPONSE_PATH = "/v1/responses/resp_1"
OUTPUT = [
    {
        "type": "message",
        "id": "msg_1",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Hello.", "annotations": []}],
    }
]


@pytest.fixture
def openai(services):
    return services.providers["openai"]


def event(event_type: str, object_id: str = "resp_1") -> dict:
    return {
        "object": "event",
        "id": "evt_685343a1381c819085d44c354e1b330e",
        "type": event_type,
        "created_at": 1750287018,
        "data": {"id": object_id},
    }


def response(status: str, **fields) -> dict:
    return {
        "id": "resp_1",
        "object": "response",
        "status": status,
        "background": True,
        "output": [],
        "error": None,
        "incomplete_details": None,
        "metadata": {},
        **fields,
    }


def requests_to(api, path):
    return [r for r in api.requests if r["method"] == "GET" and r["path"] == path]


@pytest.mark.parametrize(
    ("event_type", "fetched", "status", "progress", "result", "error"),
    [
        # The fetched response decides, whatever the event said (e.g. a stale read).
        ("response.completed", response("queued"), PROCESSING, 0, None, None),
        ("response.completed", response("in_progress"), PROCESSING, None, None, None),
        (
            "response.completed",
            response("completed", output=OUTPUT),
            COMPLETED,
            completed_means_100,
            OUTPUT,
            None,
        ),
        (
            "response.failed",
            response(
                "failed", error={"code": "server_error", "message": "The model had an error."}
            ),
            FAILED,
            None,
            None,
            "The model had an error.",
        ),
        ("response.cancelled", response("cancelled"), FAILED, None, None, "cancelled"),
        (
            "response.incomplete",
            response("incomplete", incomplete_details={"reason": "max_output_tokens"}),
            FAILED,
            None,
            None,
            "max_output_tokens",
        ),
    ],
    ids=["queued", "in_progress", "completed", "failed", "cancelled", "incomplete"],
)
def test_openai_response_events_fetch_the_response_and_map_its_status(
    openai, api, event_type, fetched, status, progress, result, error
):
    api.respond("GET", RESPONSE_PATH, (200, fetched))

    update = openai.to_update(event(event_type), OPENAI_JOB)

    (request,) = requests_to(api, RESPONSE_PATH)
    headers = {name.lower(): value for name, value in request["headers"].items()}
    assert headers["authorization"] == "Bearer sk-test-key"
    assert (update.status, update.result) == (status, result)
    if callable(progress):
        assert progress(update.progress)
    else:
        assert update.progress == progress
    if error is None:
        assert update.error_message is None
    else:
        assert error in update.error_message
    assert (update.job_id, update.external_job_id, update.provider, update.source) == (
        "job-o1",
        "resp_1",
        "openai",
        "webhook",
    )


@pytest.mark.parametrize(
    ("event_type", "status"),
    [
        ("response.completed", COMPLETED),
        ("response.failed", FAILED),
        ("response.cancelled", FAILED),
        ("response.incomplete", FAILED),
    ],
)
def test_when_the_response_is_gone_the_event_type_decides(openai, api, event_type, status):
    api.respond("GET", RESPONSE_PATH, (404, {"error": {"message": "No response found"}}))

    update = openai.to_update(event(event_type), OPENAI_JOB)

    assert api.calls("GET", RESPONSE_PATH) == 1
    assert (update.status, update.external_job_id, update.result) == (status, "resp_1", None)
    assert (update.error_message is None) == (status == COMPLETED)


def test_a_server_error_on_the_fetch_is_retried_once_within_the_request(openai, api):
    api.respond("GET", RESPONSE_PATH, (500, {}), (200, response("completed", output=OUTPUT)))

    update = openai.to_update(event("response.completed"), OPENAI_JOB)

    assert api.calls("GET", RESPONSE_PATH) == 2
    assert (update.status, update.result) == (COMPLETED, OUTPUT)


def test_two_server_errors_give_up_for_now_and_the_next_attempt_succeeds(openai, api):
    # The session retries once; a second 500 is left to the task's own retry.
    api.respond(
        "GET", RESPONSE_PATH, (500, {}), (500, {}), (200, response("completed", output=OUTPUT))
    )

    with pytest.raises(ProviderUnavailable) as error:
        openai.to_update(event("response.completed"), OPENAI_JOB)
    assert (error.value.status, api.calls("GET", RESPONSE_PATH)) == (500, 2)

    update = openai.to_update(event("response.completed"), OPENAI_JOB)

    assert api.calls("GET", RESPONSE_PATH) == 3
    assert (update.status, update.result) == (COMPLETED, OUTPUT)


def test_a_persistent_503_is_provider_unavailable_with_its_retry_after(openai, api):
    api.respond("GET", RESPONSE_PATH, (503, {"error": "overloaded"}, {"Retry-After": "1"}))

    with pytest.raises(ProviderUnavailable) as error:
        openai.to_update(event("response.completed"), OPENAI_JOB)

    assert (error.value.status, error.value.retry_after) == (503, 1.0)
    assert api.calls("GET", RESPONSE_PATH) == 2


def test_a_long_retry_after_is_left_to_the_task_not_slept_inside_the_request(openai, api):
    # provider_http: "a Retry-After longer than [backoff_max=5 s] is honoured by the
    # task's countdown instead" and "longer waits are not slept away inside a task".
    api.respond("GET", RESPONSE_PATH, (429, {"error": "slow down"}, {"Retry-After": "6"}))

    with pytest.raises(ProviderUnavailable) as error:
        openai.to_update(event("response.completed"), OPENAI_JOB)

    assert error.value.retry_after == 6.0
    assert api.calls("GET", RESPONSE_PATH) == 1


@pytest.mark.parametrize(
    ("event_type", "object_id", "status", "error_word"),
    [
        ("eval.run.succeeded", "evalrun_abc", COMPLETED, None),
        ("eval.run.failed", "evalrun_abc", FAILED, "fail"),
        ("eval.run.canceled", "evalrun_abc", FAILED, "cancel"),
    ],
)
def test_eval_run_events_map_from_the_event_type_without_a_fetch(
    openai, api, event_type, object_id, status, error_word
):
    # GET /evals/{eval_id}/runs/{id} needs the eval id, which the event does not carry.
    update = openai.to_update(event(event_type, object_id), OPENAI_JOB)

    assert api.requests == []
    assert (update.status, update.external_job_id, update.source) == (status, object_id, "webhook")
    if error_word is None:
        assert update.error_message is None
    else:
        assert error_word in update.error_message
    assert openai.waits_for_mapping(event(event_type, object_id)) is True


@pytest.mark.parametrize(
    ("event_type", "object_id", "path", "status", "error_word"),
    [
        ("batch.completed", "batch_abc", "/v1/batches/batch_abc", COMPLETED, None),
        ("batch.failed", "batch_abc", "/v1/batches/batch_abc", FAILED, "fail"),
        ("batch.expired", "batch_abc", "/v1/batches/batch_abc", FAILED, "expire"),
        ("batch.cancelled", "batch_abc", "/v1/batches/batch_abc", FAILED, "cancel"),
        (
            "fine_tuning.job.succeeded",
            "ftjob-abc",
            "/v1/fine_tuning/jobs/ftjob-abc",
            COMPLETED,
            None,
        ),
        ("fine_tuning.job.failed", "ftjob-abc", "/v1/fine_tuning/jobs/ftjob-abc", FAILED, "fail"),
        (
            "fine_tuning.job.cancelled",
            "ftjob-abc",
            "/v1/fine_tuning/jobs/ftjob-abc",
            FAILED,
            "cancel",
        ),
        ("video.completed", "video_abc", "/v1/videos/video_abc", COMPLETED, None),
        ("video.failed", "video_abc", "/v1/videos/video_abc", FAILED, "fail"),
    ],
)
def test_when_another_familys_object_is_gone_its_event_type_decides(
    openai, api, event_type, object_id, path, status, error_word
):
    # The object is fetched where its family lives; a 404 leaves the event type.
    update = openai.to_update(event(event_type, object_id), OPENAI_JOB)

    assert [r["path"] for r in api.requests] == [path]
    assert (update.status, update.external_job_id, update.source) == (status, object_id, "webhook")
    assert (update.provider_status, update.result) == (event_type, None)
    if error_word is None:
        assert update.error_message is None
    else:
        assert error_word in update.error_message
    assert openai.waits_for_mapping(event(event_type, object_id)) is True


@pytest.mark.parametrize("event_type", ["realtime.call.incoming", "safety.alert.created"])
def test_an_unknown_event_type_says_nothing_about_a_job_and_does_not_wait(openai, api, event_type):
    payload = event(event_type, "obj_abc")

    assert openai.to_update(payload, OPENAI_JOB) is None
    assert openai.waits_for_mapping(payload) is False
    assert api.requests == []


def test_a_realtime_call_incoming_event_as_openai_sends_it_is_accepted_not_an_error(openai):
    # OpenAI's documented payload for this event type: its data has call_id, not id.
    payload = {
        "object": "event",
        "id": "evt_685343a1381c819085d44c354e1b330e",
        "type": "realtime.call.incoming",
        "created_at": 1750287018,
        "data": {
            "call_id": "rtc_479a275623b54bdb9b6fbae2f7cbd408",
            "sip_headers": [{"name": "From", "value": "sip:+142555512112@sip.example.com"}],
        },
    }

    assert openai.waits_for_mapping(payload) is False
    assert openai.to_update(payload, OPENAI_JOB) is None


def test_the_openai_external_id_is_the_events_data_id(openai):
    assert openai.external_id(event("response.completed", "resp_xyz")) == "resp_xyz"


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "response.completed"},
        {"type": "response.completed", "data": {}},
        {"type": "response.completed", "data": {"id": ""}},
        {"type": "response.completed", "data": {"id": 42}},
        {"type": "response.completed", "data": "resp_1"},
    ],
    ids=["no data", "no id", "empty id", "numeric id", "data not an object"],
)
def test_an_openai_event_without_data_id_is_a_payload_error(openai, api, payload):
    with pytest.raises(PayloadError):
        openai.external_id(payload)
    with pytest.raises(PayloadError):
        openai.to_update(payload, OPENAI_JOB)
    assert api.requests == []

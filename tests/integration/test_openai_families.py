"""OpenAI beyond responses (issue 15, item 1; ids in URLs, item 6).

OpenAI's webhook names an object by id; its event type names the family
(`batch.completed`), and a poll's id names it by prefix (`batch_…`). Each family
is fetched where it lives — `/v1/responses/{id}`, `/v1/batches/{id}`,
`/v1/fine_tuning/jobs/{id}`, `/v1/videos/{id}` — and its outcome lands in `result`
and `error_message`. Eval runs need their eval id to be fetched, which no job
carries: they are known by webhook only.

The fake API server answers with the shapes OpenAI documents (openai-python's
`Batch`, `FineTuningJob`, `Video`, `Response` types) and records every path it
is asked for, so each test can also say what was *not* asked (never
`/v1/responses/{batch_id}`). Deliveries are signed with the `standardwebhooks`
signer and go through the receiver and the real worker; polls go through the
orphan poller and the consistency check as beat runs them.
"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.conftest import OPENAI_SECRET
from tests.support import body_of, signed_headers, wait_for
from webhook_ingest.operations.consistency import ConsistencyCheck, Verdict
from webhook_ingest.operations.orphan_poller import OrphanPoller, PollOutcome
from webhook_ingest.providers import JobRef, PayloadError
from webhook_ingest.providers.openai import NotPollable
from webhook_ingest.state import keys
from webhook_ingest.state.job_update import (
    COMPLETED,
    FAILED,
    PROCESSING,
    SOURCE_WEBHOOK,
    JobStateUpdate,
)

AFTER_S, INTERVAL_S, GRACE_S = 300, 60, 600
MINUTE = 60_000


# -- the documented objects ------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:16]}"


def batch(batch_id: str, status: str, **fields) -> dict:
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "errors": None,
        "input_file_id": "file-abc123",
        "completion_window": "24h",
        "status": status,
        "output_file_id": None,
        "error_file_id": None,
        "created_at": 1711471533,
        "request_counts": {"total": 100, "completed": 0, "failed": 0},
        "metadata": None,
        **fields,
    }


COMPLETED_BATCH_FILES = {
    "output_file_id": "file-cvaTdG",
    "error_file_id": "file-HOWS94",
    "request_counts": {"total": 100, "completed": 95, "failed": 5},
}


def fine_tuning_job(job_id: str, status: str, **fields) -> dict:
    return {
        "id": job_id,
        "object": "fine_tuning.job",
        "model": "gpt-4o-mini-2024-07-18",
        "created_at": 1721764800,
        "finished_at": None,
        "fine_tuned_model": None,
        "organization_id": "org-123",
        "result_files": [],
        "status": status,
        "validation_file": None,
        "training_file": "file-abc123",
        "hyperparameters": {"n_epochs": "auto"},
        "trained_tokens": None,
        "error": None,
        **fields,
    }


def video(video_id: str, status: str, **fields) -> dict:
    return {
        "id": video_id,
        "object": "video",
        "model": "sora-2",
        "status": status,
        "progress": 0,
        "created_at": 1758941485,
        "completed_at": None,
        "expires_at": None,
        "seconds": "8",
        "size": "1280x720",
        "remixed_from_video_id": None,
        "error": None,
        **fields,
    }


def response(response_id: str, status: str, **fields) -> dict:
    return {
        "id": response_id,
        "object": "response",
        "status": status,
        "background": True,
        "output": [],
        "error": None,
        "incomplete_details": None,
        "metadata": {},
        **fields,
    }


def event(event_type: str, object_id: str) -> dict:
    return {
        "object": "event",
        "id": f"evt_{uuid.uuid4().hex}",
        "type": event_type,
        "created_at": 1750287018,
        "data": {"id": object_id},
    }


# -- helpers ---------------------------------------------------------------------------------


def paths_asked(api) -> list[str]:
    return [r["path"] for r in api.requests if r["method"] == "GET"]


def responses_asked(api) -> list[str]:
    return [path for path in paths_asked(api) if path.startswith("/v1/responses")]


def state_of(redis_client, job_id: str) -> dict[str, str]:
    return redis_client.hgetall(keys.job_state(job_id))


def deliver(client, payload: dict) -> None:
    body = body_of(payload)
    answer = client.post("/webhook/openai", data=body, headers=signed_headers(OPENAI_SECRET, body))
    assert answer.status_code == 202, answer.get_json()


def finished_state(redis_client, job_id: str) -> dict[str, str]:
    return wait_for(
        lambda: (
            (state := state_of(redis_client, job_id)).get("status") in (COMPLETED, FAILED) and state
        ),
        message=f"{job_id} to finish",
    )


@pytest.fixture
def openai(services):
    return services.providers["openai"]


@pytest.fixture
def poller(services_with, api) -> OrphanPoller:
    return OrphanPoller(
        services_with(
            ORPHAN_AFTER_SECONDS=AFTER_S,
            ORPHAN_POLL_INTERVAL_SECONDS=INTERVAL_S,
            ORPHAN_NOT_FOUND_GRACE_SECONDS=GRACE_S,
        )
    )


def registered_at(redis_client, job_id: str) -> int:
    return int(redis_client.hget(keys.job_mapping(job_id), "created_at"))


# -- batches ---------------------------------------------------------------------------------


def test_a_batch_completed_by_webhook_keeps_its_files_and_counts(
    client, services, worker, redis_client, api, job_id
):
    batch_id = new_id("batch_")
    services.jobs.register(job_id, "openai", batch_id)
    api.respond(
        "GET",
        f"/v1/batches/{batch_id}",
        (200, batch(batch_id, "completed", **COMPLETED_BATCH_FILES)),
    )

    deliver(client, event("batch.completed", batch_id))

    state = finished_state(redis_client, job_id)
    assert (state["status"], state["progress"], state["source"]) == (COMPLETED, "100", "webhook")
    assert json.loads(state["result"]) == COMPLETED_BATCH_FILES
    assert paths_asked(api) == [f"/v1/batches/{batch_id}"]
    assert responses_asked(api) == []


def test_a_long_batch_is_polled_as_a_batch_stays_processing_and_its_webhook_still_lands(
    client, services, worker, redis_client, api, poller, job_id
):
    """The batch runs for hours with no event; past ORPHAN_AFTER_SECONDS and the 404
    grace the poller asks /v1/batches (not /v1/responses, which would 404 and fail
    the job), and the real batch.completed is applied, not dropped as late."""
    batch_id = new_id("batch_")
    services.jobs.register(job_id, "openai", batch_id)
    registered = registered_at(redis_client, job_id)
    running = {"request_counts": {"total": 100, "completed": 40, "failed": 2}}
    api.respond("GET", f"/v1/batches/{batch_id}", (200, batch(batch_id, "in_progress", **running)))

    later = registered + (GRACE_S + AFTER_S) * 1000 + 3 * 3600 * 1000
    assert poller.poll("openai", job_id, now_ms=later) is PollOutcome.APPLIED

    state = state_of(redis_client, job_id)
    polled = (state["status"], state["progress"], state["source"])
    assert polled == (PROCESSING, "42", "orphan_poll")

    api.respond(
        "GET",
        f"/v1/batches/{batch_id}",
        (200, batch(batch_id, "completed", **COMPLETED_BATCH_FILES)),
    )
    deliver(client, event("batch.completed", batch_id))

    state = finished_state(redis_client, job_id)
    assert (state["status"], state["source"]) == (COMPLETED, "webhook")
    assert json.loads(state["result"]) == COMPLETED_BATCH_FILES
    assert responses_asked(api) == []


def test_a_batch_whose_webhook_was_lost_is_completed_by_the_orphan_poll(
    services, redis_client, api, poller, job_id
):
    batch_id = new_id("batch_")
    services.jobs.register(job_id, "openai", batch_id)
    api.respond(
        "GET",
        f"/v1/batches/{batch_id}",
        (200, batch(batch_id, "completed", **COMPLETED_BATCH_FILES)),
    )

    due = registered_at(redis_client, job_id) + AFTER_S * 1000
    assert poller.take_due(now_ms=due) == {"openai": [job_id]}
    assert poller.poll("openai", job_id, now_ms=due) is PollOutcome.APPLIED

    state = state_of(redis_client, job_id)
    assert (state["status"], state["source"]) == (COMPLETED, "orphan_poll")
    assert json.loads(state["result"]) == COMPLETED_BATCH_FILES
    assert paths_asked(api) == [f"/v1/batches/{batch_id}"]
    assert responses_asked(api) == []


@pytest.mark.parametrize(
    ("fields", "status", "error", "result"),
    [
        (
            {
                "status": "failed",
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "errors": {
                    "object": "list",
                    "data": [
                        {
                            "code": "invalid_json_line",
                            "line": 3,
                            "message": "This line is not parseable as valid JSON.",
                            "param": None,
                        }
                    ],
                },
            },
            FAILED,
            "batch failed: line 3: This line is not parseable as valid JSON.",
            {"request_counts": {"total": 0, "completed": 0, "failed": 0}},
        ),
        (
            {
                "status": "expired",
                "output_file_id": "file-partial",
                "request_counts": {"total": 10, "completed": 6, "failed": 0},
            },
            FAILED,
            "batch expired: not finished within its completion window",
            {
                "output_file_id": "file-partial",
                "request_counts": {"total": 10, "completed": 6, "failed": 0},
            },
        ),
        (
            {"status": "cancelled", "request_counts": {"total": 10, "completed": 0, "failed": 0}},
            FAILED,
            "batch cancelled",
            {"request_counts": {"total": 10, "completed": 0, "failed": 0}},
        ),
        ({"status": "validating"}, PROCESSING, None, None),
        ({"status": "finalizing"}, PROCESSING, None, None),
    ],
    ids=["failed", "expired", "cancelled", "validating", "finalizing"],
)
def test_a_batchs_status_maps_with_its_reason_and_what_it_finished(
    openai, api, fields, status, error, result
):
    batch_id = new_id("batch_")
    api.respond("GET", f"/v1/batches/{batch_id}", (200, batch(batch_id, **fields)))
    job = JobRef(job_id="job-b", provider="openai", external_job_id=batch_id)

    update = openai.poll_job_status(job)

    assert (update.status, update.error_message, update.result) == (status, error, result)
    assert update.provider_status == fields["status"]
    assert paths_asked(api) == [f"/v1/batches/{batch_id}"]


# -- fine-tuning jobs ------------------------------------------------------------------------


def test_a_failed_fine_tune_says_why(client, services, worker, redis_client, api, job_id):
    ftjob_id = new_id("ftjob-")
    services.jobs.register(job_id, "openai", ftjob_id)
    reason = "The training file has 3 examples; at least 10 are required."
    error = {"code": "invalid_training_file", "message": reason, "param": "training_file"}
    api.respond(
        "GET",
        f"/v1/fine_tuning/jobs/{ftjob_id}",
        (200, fine_tuning_job(ftjob_id, "failed", error=error)),
    )

    deliver(client, event("fine_tuning.job.failed", ftjob_id))

    state = finished_state(redis_client, job_id)
    assert (state["status"], state["error_message"]) == (FAILED, reason)
    assert paths_asked(api) == [f"/v1/fine_tuning/jobs/{ftjob_id}"]


def test_a_fine_tune_polled_after_success_names_its_model(openai, api):
    ftjob_id = new_id("ftjob-")
    done = fine_tuning_job(
        ftjob_id,
        "succeeded",
        fine_tuned_model="ft:gpt-4o-mini-2024-07-18:org::abc123",
        result_files=["file-results"],
        trained_tokens=5768,
    )
    api.respond("GET", f"/v1/fine_tuning/jobs/{ftjob_id}", (200, done))

    update = openai.poll_job_status(JobRef("job-f", "openai", ftjob_id))

    assert (update.status, update.source) == (COMPLETED, "orphan_poll")
    assert update.result == {
        "fine_tuned_model": "ft:gpt-4o-mini-2024-07-18:org::abc123",
        "result_files": ["file-results"],
        "trained_tokens": 5768,
    }
    assert responses_asked(api) == []


# -- videos ----------------------------------------------------------------------------------


def test_a_completed_video_updates_its_registered_job(
    client, services, worker, redis_client, api, job_id
):
    video_id = new_id("video_")
    services.jobs.register(job_id, "openai", video_id)
    api.respond(
        "GET",
        f"/v1/videos/{video_id}",
        (200, video(video_id, "completed", progress=100, expires_at=1759027885)),
    )

    deliver(client, event("video.completed", video_id))

    state = finished_state(redis_client, job_id)
    assert (state["status"], state["progress"]) == (COMPLETED, "100")
    assert json.loads(state["result"]) == {
        "id": video_id,
        "model": "sora-2",
        "seconds": "8",
        "size": "1280x720",
        "expires_at": 1759027885,
    }
    assert paths_asked(api) == [f"/v1/videos/{video_id}"]


def test_a_failed_video_fails_its_registered_job_with_the_reason(
    client, services, worker, redis_client, api, job_id
):
    video_id = new_id("video_")
    services.jobs.register(job_id, "openai", video_id)
    error = {"code": "moderation_blocked", "message": "The prompt was blocked by moderation."}
    api.respond("GET", f"/v1/videos/{video_id}", (200, video(video_id, "failed", error=error)))

    deliver(client, event("video.failed", video_id))

    state = finished_state(redis_client, job_id)
    assert (state["status"], state["error_message"]) == (
        FAILED,
        "The prompt was blocked by moderation.",
    )


def test_a_video_in_progress_reports_its_progress_when_polled(openai, api):
    video_id = new_id("video_")
    api.respond("GET", f"/v1/videos/{video_id}", (200, video(video_id, "in_progress", progress=37)))

    update = openai.poll_job_status(JobRef("job-v", "openai", video_id))

    assert (update.status, update.progress) == (PROCESSING, 37)
    assert paths_asked(api) == [f"/v1/videos/{video_id}"]


@pytest.mark.parametrize("event_type", ["video.completed", "video.failed"])
def test_video_events_wait_for_their_job_like_the_other_families(openai, event_type):
    assert openai.waits_for_mapping(event(event_type, "video_1")) is True


# -- responses -------------------------------------------------------------------------------


def test_an_incomplete_response_keeps_its_partial_output_and_reason(
    client, services, worker, redis_client, api, job_id
):
    response_id = new_id("resp_")
    services.jobs.register(job_id, "openai", response_id)
    partial = [
        {
            "type": "message",
            "id": "msg_1",
            "status": "incomplete",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Once upon a", "annotations": []}],
        }
    ]
    incomplete = response(
        response_id,
        "incomplete",
        output=partial,
        incomplete_details={"reason": "max_output_tokens"},
    )
    api.respond("GET", f"/v1/responses/{response_id}", (200, incomplete))

    deliver(client, event("response.incomplete", response_id))

    state = finished_state(redis_client, job_id)
    assert state["status"] == FAILED
    assert state["error_message"] == "incomplete: max_output_tokens"
    assert json.loads(state["result"]) == partial


def test_an_id_without_a_known_prefix_is_still_polled_as_a_response(openai, api):
    # Mappings written before the other families were tracked, or by other services.
    api.respond("GET", "/v1/responses/legacy-42", (200, response("legacy-42", "in_progress")))

    update = openai.poll_job_status(JobRef("job-r", "openai", "legacy-42"))

    assert update.status == PROCESSING
    assert paths_asked(api) == ["/v1/responses/legacy-42"]


# -- eval runs: webhook only -----------------------------------------------------------------


def test_an_eval_run_is_known_by_its_event_and_never_fetched_without_its_eval_id(openai, api):
    run_id = new_id("evalrun_")
    job = JobRef("job-e", "openai", run_id)

    update = openai.to_update(event("eval.run.failed", run_id), job)

    assert (update.status, update.error_message, update.provider_status) == (
        FAILED,
        "eval run failed",
        "eval.run.failed",
    )
    with pytest.raises(NotPollable, match="webhook only"):
        openai.poll_job_status(job)
    assert api.requests == []


def test_the_poller_leaves_an_eval_run_to_its_webhook_instead_of_failing_it(
    client, services, worker, redis_client, api, poller, job_id
):
    """Past the 404 grace an eval run polled at /v1/responses was failed as unknown;
    it cannot be polled at all, so the poller backs off and its event decides."""
    run_id = new_id("evalrun_")
    services.jobs.register(job_id, "openai", run_id)
    later = registered_at(redis_client, job_id) + (GRACE_S + AFTER_S) * 1000 + 3600 * 1000

    assert poller.poll("openai", job_id, now_ms=later) is PollOutcome.BACKING_OFF
    assert state_of(redis_client, job_id).get("status") != FAILED
    assert api.requests == []

    deliver(client, event("eval.run.succeeded", run_id))

    state = finished_state(redis_client, job_id)
    assert (state["status"], state["source"]) == (COMPLETED, "webhook")


# -- ids in URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("external_id", "sent_path"),
    [
        ("batch_../../files/file-abc", "/v1/batches/batch_..%2F..%2Ffiles%2Ffile-abc"),
        ("resp_x/../batches/b?q=1#f", "/v1/responses/resp_x%2F..%2Fbatches%2Fb%3Fq%3D1%23f"),
        ("../fine_tuning/jobs/ftjob-1", "/v1/responses/..%2Ffine_tuning%2Fjobs%2Fftjob-1"),
        ("video_é 1", "/v1/videos/video_%C3%A9%201"),
    ],
    ids=["batch traversal", "query and fragment", "leading dots", "non-ascii"],
)
def test_an_id_goes_into_the_url_as_one_quoted_segment(openai, api, external_id, sent_path):
    api.respond("GET", sent_path, (200, {"id": external_id, "status": "in_progress"}))

    openai.poll_job_status(JobRef("job-q", "openai", external_id))

    assert paths_asked(api) == [sent_path]


@pytest.mark.parametrize("external_id", [".", ".."])
def test_a_dot_segment_id_is_refused_without_a_request(openai, api, external_id):
    # requests unquotes %2E, and a server folds /responses/.. into /v1/.
    with pytest.raises(PayloadError, match="not an OpenAI object id"):
        openai.poll_job_status(JobRef("job-d", "openai", external_id))
    assert api.requests == []


def test_a_webhooks_id_is_quoted_too(client, services, worker, redis_client, api, job_id):
    ftjob_id = "ftjob-1/../../../files/file-secret/content"
    quoted = "/v1/fine_tuning/jobs/ftjob-1%2F..%2F..%2F..%2Ffiles%2Ffile-secret%2Fcontent"
    services.jobs.register(job_id, "openai", ftjob_id)
    api.respond("GET", quoted, (200, fine_tuning_job(ftjob_id, "cancelled")))

    deliver(client, event("fine_tuning.job.cancelled", ftjob_id))

    state = finished_state(redis_client, job_id)
    assert (state["status"], state["error_message"]) == (FAILED, "fine-tuning job cancelled")
    assert paths_asked(api) == [quoted]


# -- the consistency check -------------------------------------------------------------------


def test_the_consistency_check_asks_a_finished_batch_where_batches_live(
    services_with, services, api, redis_client
):
    check = ConsistencyCheck(services_with())
    job_id, batch_id = new_id("job-"), new_id("batch_")
    services.jobs.register(job_id, "openai", batch_id)
    services.state.apply(
        JobStateUpdate(
            job_id=job_id,
            status=COMPLETED,
            provider="openai",
            source=SOURCE_WEBHOOK,
            external_job_id=batch_id,
            result=COMPLETED_BATCH_FILES,
        )
    )
    api.respond(
        "GET",
        f"/v1/batches/{batch_id}",
        (200, batch(batch_id, "completed", **COMPLETED_BATCH_FILES)),
    )

    assert check.check("openai", job_id) is Verdict.AGREE
    assert paths_asked(api) == [f"/v1/batches/{batch_id}"]
    assert responses_asked(api) == []

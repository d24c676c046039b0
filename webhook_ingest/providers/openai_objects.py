"""OpenAI's asynchronous objects: where each family lives and how its status reads.

OpenAI's webhook names an object by id only (`data.id`), and its event type says
the family (`batch.completed`); a poll has only the id, whose prefix says the same
(`batch_…`). Each family is fetched at its own endpoint and has its own statuses
and outcome, so one table row per family keeps the provider module free of
`if batch … elif video …` chains.

Eval runs are the exception: `GET /evals/{eval_id}/runs/{run_id}` needs the eval
id, which neither the event nor a job mapping carries, so an eval run is known by
its webhook's event type only and cannot be polled.

Everything here is a plain function of a document (no I/O), which the fuzz tests
call directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from webhook_ingest.providers.base import PayloadError
from webhook_ingest.state.job_update import COMPLETED, FAILED, PROCESSING

# Longest piece of provider text put into an error_message, and how many of a
# batch's errors are named there (the rest are in its error file).
_MAX_TEXT = 300
_MAX_BATCH_ERRORS = 3


@dataclass(frozen=True)
class Observed:
    """What one OpenAI object says about its job, in our vocabulary."""

    status: str
    provider_status: str
    progress: int | None = None
    result: Any = None
    error_message: str | None = None


@dataclass(frozen=True)
class Family:
    """One kind of OpenAI object a job can be.

    `collection`: its path under the API base (`GET {base}/{collection}/{id}`); None
    when the id alone cannot fetch it. `events`: what each of its webhook event
    types says when the object cannot be fetched (gone, or not fetchable at all).
    """

    name: str  # the event types' prefix: `batch` for `batch.completed`
    id_prefix: str
    collection: str | None
    observe: Callable[[dict[str, Any]], Observed] | None
    events: Mapping[str, tuple[str, str | None]]

    def owns_event(self, event_type: str) -> bool:
        return event_type.startswith(f"{self.name}.")


# -- helpers ------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    """A provider's message as bounded text; None when it gave none."""
    if value is None or value == "":
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _error_text(error: Any) -> str | None:
    """`error.message` (else `error.code`) of an OpenAI error object."""
    if not isinstance(error, dict):
        return None
    return _text(error.get("message")) or _text(error.get("code"))


def _count(value: Any) -> int | None:
    # bool is an int in Python, but never a count
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _percent(value: Any) -> int | None:
    """A 0-100 progress from a provider's number, None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return int(max(0, min(100, value)))


def _present(document: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: document[name] for name in names if document.get(name) is not None}


def _unknown(family: str, status: Any) -> PayloadError:
    return PayloadError(f"unknown OpenAI {family} status {status!r:.40}")


# -- responses ----------------------------------------------------------------------------


def observe_response(response: dict[str, Any]) -> Observed:
    """A Response (`GET /responses/{id}`): the output is the result; an incomplete
    response keeps what it produced before it stopped, beside its reason."""
    status = response.get("status")
    if status == "queued":
        return Observed(PROCESSING, status, progress=0)
    if status == "in_progress":
        return Observed(PROCESSING, status)
    if status == "completed":
        return Observed(COMPLETED, status, result=response.get("output"))
    if status == "failed":
        message = _error_text(response.get("error")) or "response failed"
        return Observed(FAILED, status, error_message=message)
    if status == "cancelled":
        return Observed(FAILED, status, error_message="cancelled")
    if status == "incomplete":
        details = response.get("incomplete_details")
        reason = _text(details.get("reason")) if isinstance(details, dict) else None
        output = response.get("output")
        return Observed(
            FAILED,
            status,
            result=output or None,  # [] is no partial output
            error_message=f"incomplete: {reason}" if reason else "incomplete",
        )
    raise _unknown("response", status)


# -- batches ------------------------------------------------------------------------------


def _batch_outcome(batch: dict[str, Any]) -> dict[str, Any] | None:
    """Where a batch's results are: its output and error files and request counts.

    Expired and cancelled batches keep the results of the requests they finished,
    so this is the result of every finished batch that has any.
    """
    outcome = _present(batch, "output_file_id", "error_file_id", "request_counts")
    return outcome or None


def _batch_progress(batch: dict[str, Any]) -> int | None:
    """Requests done of the batch's total; below 100 until the batch completes."""
    counts = batch.get("request_counts")
    if not isinstance(counts, dict):
        return None
    total = _count(counts.get("total"))
    done = [_count(counts.get(name)) for name in ("completed", "failed")]
    if not total or None in done:
        return None
    return min(99, sum(done) * 100 // total)


def _batch_errors(batch: dict[str, Any]) -> str | None:
    """`errors.data[].message` (with the input line), a few of them: a batch that
    failed validation says why there."""
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    if not isinstance(data, list):
        return None
    messages = []
    for error in data:
        message = _error_text(error)
        if message is None:
            continue
        line = _count(error.get("line"))
        messages.append(f"line {line}: {message}" if line is not None else message)
    if not messages:
        return None
    named = "; ".join(messages[:_MAX_BATCH_ERRORS])
    more = len(messages) - _MAX_BATCH_ERRORS
    return f"{named} (and {more} more)" if more > 0 else named


def observe_batch(batch: dict[str, Any]) -> Observed:
    """A Batch (`GET /batches/{id}`). A completed batch may hold failed requests:
    its error file and counts say which, the batch itself completed."""
    status = batch.get("status")
    if status == "validating":
        return Observed(PROCESSING, status, progress=0)
    if status in ("in_progress", "finalizing", "cancelling"):
        return Observed(PROCESSING, status, progress=_batch_progress(batch))
    outcome = _batch_outcome(batch)
    if status == "completed":
        return Observed(COMPLETED, status, result=outcome)
    if status == "failed":
        reason = _batch_errors(batch)
        message = f"batch failed: {reason}" if reason else "batch failed"
        return Observed(FAILED, status, result=outcome, error_message=message)
    if status == "expired":
        message = "batch expired: not finished within its completion window"
        return Observed(FAILED, status, result=outcome, error_message=message)
    if status == "cancelled":
        return Observed(FAILED, status, result=outcome, error_message="batch cancelled")
    raise _unknown("batch", status)


# -- fine-tuning jobs ---------------------------------------------------------------------


def observe_fine_tuning_job(job: dict[str, Any]) -> Observed:
    """A FineTuningJob (`GET /fine_tuning/jobs/{id}`): the fine-tuned model's name
    is the result, `error.message` the reason of a failure."""
    status = job.get("status")
    if status in ("validating_files", "queued"):
        return Observed(PROCESSING, status, progress=0)
    if status == "running":
        return Observed(PROCESSING, status)
    if status == "succeeded":
        result = _present(job, "fine_tuned_model", "result_files", "trained_tokens")
        return Observed(COMPLETED, status, result=result or None)
    if status == "failed":
        message = _error_text(job.get("error")) or "fine-tuning job failed"
        return Observed(FAILED, status, error_message=message)
    if status == "cancelled":
        return Observed(FAILED, status, error_message="fine-tuning job cancelled")
    raise _unknown("fine-tuning job", status)


# -- videos -------------------------------------------------------------------------------


def observe_video(video: dict[str, Any]) -> Observed:
    """A Video (`GET /videos/{id}`). Its content is downloaded from
    `GET /videos/{id}/content` (with an API key) until `expires_at`; the result says
    which video and how long it can be fetched."""
    status = video.get("status")
    if status == "queued":
        return Observed(PROCESSING, status, progress=0)
    if status == "in_progress":
        return Observed(PROCESSING, status, progress=_percent(video.get("progress")))
    if status == "completed":
        result = _present(video, "id", "model", "seconds", "size", "expires_at")
        return Observed(COMPLETED, status, result=result or None)
    if status == "failed":
        message = _error_text(video.get("error")) or "video generation failed"
        return Observed(FAILED, status, error_message=message)
    raise _unknown("video", status)


# -- the families -------------------------------------------------------------------------

RESPONSE = Family(
    "response",
    "resp_",
    "responses",
    observe_response,
    {
        "response.completed": (COMPLETED, None),
        "response.failed": (FAILED, "response failed"),
        "response.cancelled": (FAILED, "cancelled"),
        "response.incomplete": (FAILED, "response incomplete"),
    },
)
BATCH = Family(
    "batch",
    "batch_",
    "batches",
    observe_batch,
    {
        "batch.completed": (COMPLETED, None),
        "batch.failed": (FAILED, "batch failed"),
        "batch.expired": (FAILED, "batch expired"),
        "batch.cancelled": (FAILED, "batch cancelled"),
    },
)
FINE_TUNING_JOB = Family(
    "fine_tuning.job",
    "ftjob-",
    "fine_tuning/jobs",
    observe_fine_tuning_job,
    {
        "fine_tuning.job.succeeded": (COMPLETED, None),
        "fine_tuning.job.failed": (FAILED, "fine-tuning job failed"),
        "fine_tuning.job.cancelled": (FAILED, "fine-tuning job cancelled"),
    },
)
VIDEO = Family(
    "video",
    "video_",
    "videos",
    observe_video,
    {
        "video.completed": (COMPLETED, None),
        "video.failed": (FAILED, "video generation failed"),
    },
)
EVAL_RUN = Family(
    "eval.run",
    "evalrun_",
    None,  # GET /evals/{eval_id}/runs/{id}: the eval id is not ours to know
    None,
    {
        "eval.run.succeeded": (COMPLETED, None),
        "eval.run.failed": (FAILED, "eval run failed"),
        "eval.run.canceled": (FAILED, "eval run canceled"),
    },
)
FAMILIES = (RESPONSE, BATCH, FINE_TUNING_JOB, VIDEO, EVAL_RUN)

# Every event type that says a tracked job finished: (status, error_message).
EVENT_STATUS: dict[str, tuple[str, str | None]] = {
    event_type: said for family in FAMILIES for event_type, said in family.events.items()
}


def family_of_event(event_type: str) -> Family | None:
    """The family an event type is about; None for types that name no job
    (`realtime.call.incoming`, and whatever OpenAI adds)."""
    return next((family for family in FAMILIES if family.owns_event(event_type)), None)


def family_of_id(object_id: str) -> Family:
    """The family an id belongs to, by its prefix. An id with no known prefix is
    taken for a response, as every OpenAI job was before the other families were
    tracked (mappings written then, or by other services, may carry such ids)."""
    return next((f for f in FAMILIES if object_id.startswith(f.id_prefix)), RESPONSE)

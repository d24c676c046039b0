"""StateStore.apply against a real Redis: the rules of contract §4.

`job_state:{job_id}` and `job_mapping:{job_id}` are shared with the rest of the
job system, so these tests read them with plain Redis commands, as it would.
"""

from __future__ import annotations

import json

import pytest
from marshmallow import ValidationError

from tests.support import BROADCAST_FIELDS, Subscriber
from webhook_ingest.state.job_update import JobStateUpdate
from webhook_ingest.state.store import Outcome, keys

T0 = 1_750_000_000_000  # epoch ms
SEED_FIELDS = BROADCAST_FIELDS


def update(job_id, status="processing", *, at=T0, source="webhook", **fields) -> JobStateUpdate:
    return JobStateUpdate(
        job_id=job_id,
        status=status,
        provider="replicate",
        source=source,
        external_job_id=fields.pop("external_job_id", "pred_1"),
        updated_at=at,
        **fields,
    )


class Deliveries:
    """Applies webhook updates, each with a fresh delivery id unless one is given."""

    def __init__(self, state) -> None:
        self.state = state
        self.count = 0

    def __call__(self, upd: JobStateUpdate, delivery_id: str | None = None):
        self.count += 1
        return self.state.apply(upd, delivery_id or f"msg_{self.count}")


@pytest.fixture
def apply(services):
    return Deliveries(services.state)


@pytest.fixture
def state(redis_client, job_id):
    return lambda: redis_client.hgetall(keys.job_state(job_id))


@pytest.fixture
def broadcasts(redis_client, job_id):
    subscriber = Subscriber(redis_client, keys.progress_channel(job_id), keys.UPDATES_CHANNEL)
    yield subscriber
    subscriber.close()


def on(channel, messages):
    return [message for name, message in messages if name == channel]


# -- the first update ---------------------------------------------------------------


def test_the_first_update_writes_the_state_hash(apply, state, job_id):
    result = apply(update(job_id, progress=10, at=T0 + 5))

    assert result.outcome is Outcome.APPLIED
    written = state()
    assert {
        name: written.get(name)
        for name in ("status", "progress", "updated_at", "source", "provider", "external_job_id")
    } == {
        "status": "processing",
        "progress": "10",
        "updated_at": str(T0 + 5),
        "source": "webhook",
        "provider": "replicate",
        "external_job_id": "pred_1",
    }


def test_a_first_update_without_progress_starts_at_zero(apply, state, job_id):
    apply(update(job_id, progress=None))

    assert state()["progress"] == "0"


# -- monotonic: progress and terminal states ---------------------------------------------

P, C, F = "processing", "completed", "failed"


@pytest.mark.parametrize(
    ("observations", "final_status", "final_progress"),
    [
        ([(P, 50), (P, 30)], P, 50),  # progress never goes down
        ([(P, 30), (P, 50)], P, 50),
        ([(P, 50), (P, None)], P, 50),  # None: the provider said nothing, keep it
        ([(P, 40), (C, None)], C, 100),  # completed means 100
        ([(P, 40), (C, 70)], C, 100),
        ([(P, 40), (F, None)], F, 40),  # failed keeps the progress reached
        ([(C, None), (P, 10)], C, 100),  # terminal is final
        ([(F, None), (C, None)], F, 0),
        ([(C, None), (F, None)], C, 100),
        ([(P, 90), (C, None), (P, 95)], C, 100),
    ],
)
def test_updates_are_monotonic(apply, state, job_id, observations, final_status, final_progress):
    for step, (status, progress) in enumerate(observations):
        apply(update(job_id, status, progress=progress, at=T0 + step))

    assert (state()["status"], int(state()["progress"])) == (final_status, final_progress)


@pytest.mark.parametrize(
    ("terminal", "late"),
    [
        (update("-", C, result={"url": "a"}), update("-", P, progress=99)),
        (update("-", F, error_message="boom"), update("-", C, result={"url": "b"})),
        (update("-", C, result={"url": "a"}), update("-", F, error_message="late")),
    ],
    ids=["completed then processing", "failed then completed", "completed then failed"],
)
def test_after_a_terminal_state_later_observations_are_ignored(
    apply, state, broadcasts, job_id, terminal, late
):
    apply(with_job(terminal, job_id))
    before = state()

    outcome = apply(with_job(late, job_id, at=T0 + 1000)).outcome

    assert outcome is Outcome.TERMINAL
    assert state() == before
    assert len(on(keys.progress_channel(job_id), broadcasts.drain())) == 1


def with_job(upd: JobStateUpdate, job_id: str, at: int = T0) -> JobStateUpdate:
    return JobStateUpdate(**{**upd.to_dict(), "job_id": job_id, "updated_at": at})


# -- duplicates and polls ----------------------------------------------------------------


def test_the_same_delivery_twice_is_applied_once_and_broadcast_once(
    services, state, broadcasts, job_id
):
    first = services.state.apply(update(job_id, progress=20), "msg_same")
    after_first = state()
    second = services.state.apply(update(job_id, progress=20, at=T0 + 1), "msg_same")

    assert (first.outcome, second.outcome) == (Outcome.APPLIED, Outcome.DUPLICATE)
    assert state() == after_first
    assert len(on(keys.UPDATES_CHANNEL, broadcasts.drain())) == 1


def test_a_delivery_id_seen_before_changes_nothing_even_if_its_content_would(
    services, state, job_id
):
    services.state.apply(update(job_id, progress=20), "msg_same")

    again = services.state.apply(update(job_id, C, result=["x"], at=T0 + 1), "msg_same")

    assert again.outcome is Outcome.DUPLICATE
    assert (state()["status"], state()["progress"]) == ("processing", "20")


def test_polls_are_not_deduplicated_but_an_identical_poll_changes_nothing(
    services, state, broadcasts, job_id
):
    def poll(progress, at):
        return services.state.apply(update(job_id, progress=progress, at=at, source="orphan_poll"))

    outcomes = [poll(10, T0).outcome, poll(20, T0 + 1).outcome, poll(20, T0 + 2).outcome]

    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED, Outcome.UNCHANGED]
    assert state()["updated_at"] == str(T0 + 1)
    assert [m["progress"] for m in on(keys.UPDATES_CHANNEL, broadcasts.drain())] == [10, 20]


# -- result and error_message ------------------------------------------------------------


@pytest.mark.parametrize(
    "result",
    [
        ["https://replicate.delivery/a/out-0.png", "https://replicate.delivery/a/out-1.png"],
        "https://replicate.delivery/a/out.png",
        {"type": "message", "content": [{"type": "output_text", "text": 'héllo "wörld" ✓'}]},
        0,
        False,
        "",
    ],
    ids=["list", "string", "nested object", "zero", "false", "empty string"],
)
def test_the_result_is_stored_as_json_text_and_broadcast_as_a_json_value(
    apply, state, broadcasts, job_id, result
):
    applied = apply(update(job_id, C, result=result))

    assert json.loads(state()["result"]) == result
    (message,) = on(keys.progress_channel(job_id), broadcasts.drain())
    assert message["result"] == result
    assert applied.broadcast["result"] == result


@pytest.mark.parametrize("number", [float("nan"), float("inf")], ids=["NaN", "Infinity"])
def test_a_result_with_a_non_finite_number_is_refused_and_writes_nothing(
    services, redis_client, broadcasts, job_id, number
):
    # Python's json reads and writes NaN/Infinity, but JSON has no such values: a
    # consumer's JSON.parse would reject the whole stored or broadcast text. So an
    # update carrying one is refused before anything is written or broadcast.
    with pytest.raises(ValidationError, match="result is not JSON"):
        services.state.apply(update(job_id, C, result={"nsfw_score": number}), "msg_1")

    assert redis_client.keys("*") == []
    assert broadcasts.drain() == []


def test_a_result_is_kept_when_a_later_observation_carries_none(apply, state, job_id):
    apply(update(job_id, progress=10, result=["partial.png"]))
    apply(update(job_id, progress=30, at=T0 + 1))

    assert json.loads(state()["result"]) == ["partial.png"]


def test_a_new_result_alone_is_a_change(apply, state, broadcasts, job_id):
    # Replicate's `output` events bring partial output without new progress.
    apply(update(job_id, progress=10))

    outcome = apply(update(job_id, progress=10, result=["frame-1.png"], at=T0 + 1)).outcome

    assert outcome is Outcome.APPLIED
    assert json.loads(state()["result"]) == ["frame-1.png"]
    messages = on(keys.UPDATES_CHANNEL, broadcasts.drain())
    assert [m["result"] for m in messages] == [None, ["frame-1.png"]]


def test_the_error_message_is_stored_and_broadcast(apply, state, broadcasts, job_id):
    message = 'CUDA out of memory: tried to allocate "2.00 GiB" — ünïcode / slash\nline 2'

    apply(update(job_id, F, error_message=message))

    assert state()["error_message"] == message
    (broadcast,) = on(keys.UPDATES_CHANNEL, broadcasts.drain())
    assert broadcast["error_message"] == message


# -- the mapping and the live-jobs index ---------------------------------------------------


@pytest.mark.parametrize(("source", "touched"), [("webhook", True), ("orphan_poll", False)])
def test_a_webhook_update_touches_the_mappings_last_webhook_update(
    services, redis_client, job_id, source, touched
):
    services.jobs.register(job_id, "replicate", "pred_1")
    registered_at = services.jobs.mapping(job_id)["last_webhook_update"]
    at = int(registered_at) + 12_345

    services.state.apply(update(job_id, progress=5, at=at, source=source), "msg_1")

    expected = str(at) if touched else registered_at
    assert redis_client.hget(keys.job_mapping(job_id), "last_webhook_update") == expected


def test_no_mapping_is_created_for_a_job_that_has_none(apply, redis_client, job_id):
    apply(update(job_id, progress=5))

    assert redis_client.exists(keys.job_mapping(job_id)) == 0


def test_a_job_mapped_by_another_service_is_live_until_terminal(apply, redis_client, job_id):
    # Other services write the mapping with a plain HSET (contract §4).
    redis_client.hset(
        keys.job_mapping(job_id),
        mapping={"external_job_id": "pred_1", "provider": "replicate", "created_at": T0},
    )

    apply(update(job_id, progress=5, at=T0 + 7))
    live_while_running = redis_client.zscore(keys.live_jobs("replicate"), job_id)
    apply(update(job_id, C, at=T0 + 8))

    assert live_while_running == T0 + 7
    assert redis_client.zscore(keys.live_jobs("replicate"), job_id) is None


@pytest.mark.parametrize("status", [C, F])
def test_a_registered_job_leaves_the_live_index_when_terminal(
    services, apply, redis_client, job_id, status
):
    services.jobs.register(job_id, "replicate", "pred_1")
    apply(update(job_id, progress=5))
    assert redis_client.zscore(keys.live_jobs("replicate"), job_id) is not None

    apply(update(job_id, status, at=T0 + 1))

    assert redis_client.zscore(keys.live_jobs("replicate"), job_id) is None


def test_a_job_without_mapping_is_not_added_to_the_live_index(apply, redis_client, job_id):
    apply(update(job_id, progress=5))

    assert redis_client.zscore(keys.live_jobs("replicate"), job_id) is None


# -- broadcasts ------------------------------------------------------------------------


def test_each_applied_change_is_broadcast_once_on_both_channels_with_the_seed_fields(
    apply, broadcasts, job_id
):
    first = apply(update(job_id, progress=10, at=T0))
    apply(update(job_id, progress=10, at=T0 + 1))  # nothing new: not broadcast
    apply(update(job_id, C, result={"text": "done"}, at=T0 + 2))

    messages = broadcasts.drain()

    expected = [
        {
            "job_id": job_id,
            "external_job_id": "pred_1",
            "status": "processing",
            "progress": 10,
            "result": None,
            "error_message": None,
            "provider": "replicate",
            "updated_at": T0,
            "source": "webhook",
        },
        {
            "job_id": job_id,
            "external_job_id": "pred_1",
            "status": "completed",
            "progress": 100,
            "result": {"text": "done"},
            "error_message": None,
            "provider": "replicate",
            "updated_at": T0 + 2,
            "source": "webhook",
        },
    ]
    assert on(keys.progress_channel(job_id), messages) == expected
    assert on(keys.UPDATES_CHANNEL, messages) == expected
    assert set(expected[0]) == SEED_FIELDS
    assert first.broadcast == expected[0]


def test_an_update_for_another_job_is_not_broadcast_on_this_jobs_channel(apply, broadcasts, job_id):
    apply(update(job_id + "-other", progress=10))

    messages = broadcasts.drain()

    assert on(keys.progress_channel(job_id), messages) == []
    assert [m["job_id"] for m in on(keys.UPDATES_CHANNEL, messages)] == [job_id + "-other"]


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "done"},
        {"progress": 101},
        {"progress": -1},
        {"source": "email"},
        {"provider": ""},
        {"job_id": ""},
    ],
    ids=lambda fields: ",".join(f"{k}={v!r}" for k, v in fields.items()),
)
def test_an_invalid_update_raises_and_writes_nothing(
    services, redis_client, broadcasts, job_id, fields
):
    invalid = JobStateUpdate(**{**update(job_id).to_dict(), **fields})

    with pytest.raises(ValidationError):
        services.state.apply(invalid, "msg_1")

    assert redis_client.keys("*") == []
    assert broadcasts.drain() == []

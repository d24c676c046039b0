"""The consistency check (issue 5, the seed's "State Consistency 100%").

A run re-polls a random sample (at most CONSISTENCY_CHECK_SAMPLE) of jobs that
finished within CONSISTENCY_CHECK_WINDOW_SECONDS and at least a minute ago, at
providers that can be polled, and compares the provider's answer (the fake API
server, with the shapes of providers.md) with job_state. Results are counted in
`webhook_consistency_checks_total{provider, result=agree|disagree|unavailable}`
and each disagreement is logged; job_state is never written. A Redis lock keeps
runs of different processes apart.

Time is controlled by passing `now_ms=` to `run`; jobs finish through real
webhooks (receiver + in-process worker) or, when their finish time matters,
through `StateStore.apply` with an explicit `updated_at`, as a poll would.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from contextlib import contextmanager

import pytest
import yaml
from celery.signals import task_postrun
from prometheus_client import REGISTRY

from tests.conftest import REPLICATE_SECRET
from tests.support import Subscriber, body_of, signed_headers, wait_for
from webhook_ingest.clock import now_ms
from webhook_ingest.config import ConfigError, load_settings
from webhook_ingest.operations.consistency import ConsistencyCheck
from webhook_ingest.state.job_update import JobStateUpdate
from webhook_ingest.state.store import StateStore, keys

MINUTE = 60_000
HOUR = 60 * MINUTE
SETTLED = MINUTE  # the check leaves a job alone for a minute after it finished
CHECK_TASK = "webhook_ingest.check_consistency"


# -- helpers ---------------------------------------------------------------------------------


def checks(provider: str, result: str) -> float:
    labels = {"provider": provider, "result": result}
    return REGISTRY.get_sample_value("webhook_consistency_checks_total", labels) or 0.0


def counted(provider: str = "replicate") -> dict[str, float]:
    return {result: checks(provider, result) for result in ("agree", "disagree", "unavailable")}


def prediction_path(prediction_id: str) -> str:
    return f"/v1/predictions/{prediction_id}"


def ext(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_check(services_with, api):
    """`make_check(**settings)` -> a ConsistencyCheck with its own Services (its own
    connections, as another process would have) on the test database."""

    def make(**settings: object) -> ConsistencyCheck:
        return ConsistencyCheck(services_with(**settings))

    return make


@pytest.fixture
def check(make_check) -> ConsistencyCheck:
    return make_check()


def finish_by_webhook(client, services, redis_client, job_id: str, **prediction) -> tuple[str, int]:
    """A Replicate job that finished the way most do: its completed webhook arrived.
    Returns its prediction id and when it finished (job_state.updated_at)."""
    prediction_id = ext("pred")
    services.jobs.register(job_id, "replicate", prediction_id)
    body = body_of({"id": prediction_id, **prediction})
    response = client.post(
        f"/webhook/replicate/{job_id}", data=body, headers=signed_headers(REPLICATE_SECRET, body)
    )
    assert response.status_code == 202, response.get_json()
    state = wait_for(
        lambda: (
            (s := redis_client.hgetall(keys.job_state(job_id))).get("status")
            in ("completed", "failed")
            and s
        ),
        message=f"{job_id} to finish",
    )
    return prediction_id, int(state["updated_at"])


def finish_at(services, provider: str, finished_at: int, status: str = "completed") -> str:
    """A registered job that finished at `finished_at` (ms); returns its job id."""
    job_id = ext("job")
    external_id = ext("ext")
    services.jobs.register(job_id, provider, external_id)
    update = JobStateUpdate(
        job_id=job_id,
        status=status,
        provider=provider,
        source="orphan_poll",
        external_job_id=external_id,
        result={"ok": True} if status == "completed" else None,
        error_message=None if status == "completed" else "boom",
        updated_at=finished_at,
    )
    assert services.state.apply(update).outcome.value == "applied"
    return job_id


def answer_succeeded(api, services, job_id: str) -> str:
    """The fake Replicate API says the job's prediction succeeded; returns its path."""
    prediction_id = services.jobs.mapping(job_id)["external_job_id"]
    path = prediction_path(prediction_id)
    api.respond("GET", path, (200, {"id": prediction_id, "status": "succeeded", "output": ["x"]}))
    return path


def snapshot(redis_client, job_id: str) -> dict:
    """Everything the check must leave alone for a job."""
    return {
        "state": redis_client.hgetall(keys.job_state(job_id)),
        "mapping": redis_client.hgetall(keys.job_mapping(job_id)),
        "events": redis_client.lrange(keys.job_events(job_id), 0, -1),
    }


# -- agree, disagree, unavailable -------------------------------------------------------------


def test_a_job_the_provider_agrees_on_is_counted_agree(
    check, client, services, worker, redis_client, api, job_id
):
    prediction_id, finished = finish_by_webhook(
        client, services, redis_client, job_id, status="succeeded", output=["a.png"]
    )
    api.respond(
        "GET",
        prediction_path(prediction_id),
        (200, {"id": prediction_id, "status": "succeeded", "output": ["a.png"]}),
    )
    before, untouched = counted(), snapshot(redis_client, job_id)

    summary = check.run(now_ms=finished + SETTLED)

    assert (summary.sampled, summary.agree, summary.disagree) == (1, 1, 0)
    assert counted() == {**before, "agree": before["agree"] + 1}
    assert api.calls("GET", prediction_path(prediction_id)) == 1
    assert snapshot(redis_client, job_id) == untouched


DISAGREEING = {
    "failed-there": (
        {"status": "failed", "error": "CUDA out of memory", "output": None},
        "failed",
    ),
    "canceled-there": ({"status": "canceled", "output": None}, "failed"),
    "still-running-there": ({"status": "processing", "logs": "10%|#| 1/10\n"}, "processing"),
}


@pytest.mark.parametrize(("answer", "provider_status"), DISAGREEING.values(), ids=DISAGREEING)
def test_a_provider_that_says_otherwise_is_counted_and_logged_and_nothing_changes(
    check, client, services, worker, redis_client, api, job_id, caplog, answer, provider_status
):
    prediction_id, finished = finish_by_webhook(
        client, services, redis_client, job_id, status="succeeded", output=["b.png"]
    )
    api.respond("GET", prediction_path(prediction_id), (200, {"id": prediction_id, **answer}))
    before, untouched = counted(), snapshot(redis_client, job_id)
    caplog.set_level(logging.INFO, logger="webhook_ingest.operations.consistency")
    broadcasts = Subscriber(redis_client, keys.progress_channel(job_id))

    try:
        summary = check.run(now_ms=finished + SETTLED)
        published = broadcasts.drain()
    finally:
        broadcasts.close()

    assert (summary.agree, summary.disagree, summary.disagreements) == (0, 1, [job_id])
    assert counted() == {**before, "disagree": before["disagree"] + 1}
    [line] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert (line.provider, line.job_id) == ("replicate", job_id)
    assert (line.redis_status, line.provider_status) == ("completed", provider_status)
    # It only observes: Redis still says what it said, and nobody was told otherwise.
    assert snapshot(redis_client, job_id) == untouched
    assert published == []


@pytest.mark.parametrize(
    "answer",
    [(503, {"detail": "unavailable"}), (404, {"detail": "Not found."})],
    ids=["503", "404"],
)
def test_a_provider_that_cannot_say_is_counted_unavailable(
    check, client, services, worker, redis_client, api, job_id, caplog, answer
):
    prediction_id, finished = finish_by_webhook(
        client, services, redis_client, job_id, status="failed", error="bad input"
    )
    api.respond("GET", prediction_path(prediction_id), answer)
    before, untouched = counted(), snapshot(redis_client, job_id)
    caplog.set_level(logging.INFO, logger="webhook_ingest.operations.consistency")

    summary = check.run(now_ms=finished + SETTLED)

    assert (summary.unavailable, summary.agree, summary.disagree) == (1, 0, 0)
    assert counted() == {**before, "unavailable": before["unavailable"] + 1}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert snapshot(redis_client, job_id) == untouched


def test_each_run_logs_one_summary_line(check, services, api, caplog):
    now = now_ms()
    for _ in range(3):
        answer_succeeded(api, services, finish_at(services, "replicate", now - 5 * MINUTE))
    caplog.set_level(logging.INFO, logger="webhook_ingest.operations.consistency")

    check.run(now_ms=now)

    [line] = [r for r in caplog.records if r.getMessage().startswith("consistency check: 3")]
    assert (line.sampled, line.agree, line.disagree, line.unavailable) == (3, 3, 0, 0)


# -- which jobs are sampled --------------------------------------------------------------------


def test_only_jobs_finished_within_the_window_and_settled_are_sampled(check, services, api):
    now = now_ms()
    in_window = finish_at(services, "replicate", now - 30 * MINUTE)
    edge_of_window = finish_at(services, "replicate", now - HOUR + MINUTE)
    just_finished = finish_at(services, "replicate", now - 10_000)
    # applied last, so no newer finish trims it from the index: the window must exclude it
    too_old = finish_at(services, "replicate", now - 2 * HOUR)
    paths = {
        job: answer_succeeded(api, services, job)
        for job in (in_window, edge_of_window, just_finished, too_old)
    }

    summary = check.run(now_ms=now)

    assert (summary.candidates, summary.sampled, summary.agree) == (2, 2, 2)
    assert api.calls("GET", paths[in_window]) == 1
    assert api.calls("GET", paths[edge_of_window]) == 1
    assert api.calls("GET", paths[just_finished]) == 0, "not settled yet"
    assert api.calls("GET", paths[too_old]) == 0, "outside the window"

    # A minute later the fresh one has settled.
    assert check.run(now_ms=now + SETTLED).candidates == 3
    assert api.calls("GET", paths[just_finished]) == 1


def test_jobs_still_running_are_never_sampled(check, services, api, redis_client):
    now = now_ms()
    running = ext("job")
    services.jobs.register(running, "replicate", ext("pred"))
    services.state.apply(
        JobStateUpdate(
            job_id=running,
            status="processing",
            progress=50,
            provider="replicate",
            source="webhook",
            updated_at=now - 10 * MINUTE,
        ),
        delivery_id="msg_running",
    )

    summary = check.run(now_ms=now)

    assert (summary.candidates, summary.sampled) == (0, 0)
    assert api.requests == []


def test_the_sample_caps_the_provider_calls_of_a_run(make_check, services, api):
    check = make_check(CONSISTENCY_CHECK_SAMPLE=4)
    now = now_ms()
    jobs = [finish_at(services, "replicate", now - (5 + n) * MINUTE) for n in range(15)]
    for job in jobs:
        answer_succeeded(api, services, job)

    summary = check.run(now_ms=now)

    assert (summary.candidates, summary.sampled, summary.agree) == (15, 4, 4)
    polled = [r["path"] for r in api.requests]
    assert len(polled) == 4
    assert len(set(polled)) == 4, "four different jobs"


def test_jobs_of_providers_that_cannot_be_polled_are_not_sampled(
    make_check, tmp_path, redis_client, api
):
    """A declarative provider without a `poll` section cannot be asked about a job."""
    providers_file = tmp_path / "providers.yaml"
    providers_file.write_text(
        yaml.safe_dump(
            {
                "providers": [
                    {
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
                ]
            }
        )
    )
    check = make_check(WEBHOOK_PROVIDERS_FILE=providers_file, ACME_SECRET="acme-" + "s" * 32)
    services = check._services
    now = now_ms()
    acme_job = finish_at(services, "acme", now - 5 * MINUTE)
    replicate_job = finish_at(services, "replicate", now - 5 * MINUTE)
    path = answer_succeeded(api, services, replicate_job)
    assert redis_client.zscore(keys.finished_jobs("acme"), acme_job) is not None

    summary = check.run(now_ms=now)

    assert (summary.candidates, summary.sampled, summary.agree) == (1, 1, 1)
    assert [r["path"] for r in api.requests] == [path]


# -- the index of finished jobs ------------------------------------------------------------------


def test_the_finished_index_is_trimmed_to_the_window_and_bounded(redis_client, services):
    now = now_ms()
    old = finish_at(services, "replicate", now - 2 * HOUR)
    recent = finish_at(services, "replicate", now - MINUTE)
    index = keys.finished_jobs("replicate")

    assert redis_client.zrange(index, 0, -1) == [recent], "older than the window: trimmed"
    assert old not in redis_client.zrange(index, 0, -1)
    assert 0 < redis_client.pttl(index) <= HOUR

    small = StateStore(services.redis, applied_ttl_seconds=3600, finished_keep=3)
    bounded = dataclasses.replace(services, state=small)
    latest = [finish_at(bounded, "replicate", now - n * 1000) for n in range(5, 0, -1)]
    assert redis_client.zrange(index, 0, -1) == latest[-3:], "only the newest are kept"


def test_a_job_with_no_external_id_is_not_indexed(redis_client, services, job_id):
    services.state.apply(
        JobStateUpdate(job_id=job_id, status="completed", provider="replicate", source="webhook"),
        delivery_id="msg_no_external",
    )

    assert redis_client.zscore(keys.finished_jobs("replicate"), job_id) is None


# -- one run at a time ---------------------------------------------------------------------


def test_a_run_while_another_holds_the_lock_polls_nothing(make_check, services, api):
    first, second = make_check(), make_check()  # two processes
    now = now_ms()
    path = answer_succeeded(api, services, finish_at(services, "replicate", now - 5 * MINUTE))
    before = counted()

    with first.lock() as held:
        assert held
        summary = second.run(now_ms=now)

    assert summary.locked
    assert (summary.sampled, api.calls("GET", path)) == (0, 0)
    assert counted() == before
    # Released when the first is done: the next run goes ahead, and frees it again.
    assert not second.run(now_ms=now).locked
    assert not first.run(now_ms=now).locked
    assert api.calls("GET", path) == 2


def test_a_lock_taken_over_after_expiry_is_not_released_by_the_old_holder(check, redis_client):
    with check.lock() as held:
        assert held
        # The run outlived its lock, and another process took the lock over.
        redis_client.set(keys.CONSISTENCY_LOCK, "another-process")

    assert redis_client.get(keys.CONSISTENCY_LOCK) == "another-process"


@contextmanager
def finished_runs():
    """Return values of consistency-check tasks the in-process worker completed."""
    seen: list[dict] = []

    def on_postrun(sender=None, retval=None, **_):
        if getattr(sender, "name", None) == CHECK_TASK:
            seen.append(retval)

    task_postrun.connect(on_postrun, weak=False)
    try:
        yield seen
    finally:
        task_postrun.disconnect(on_postrun)


def test_the_scheduled_task_runs_the_check_in_the_worker_and_honours_the_lock(
    celery_app, worker, make_check, services, api
):
    path = answer_succeeded(api, services, finish_at(services, "replicate", now_ms() - 5 * MINUTE))
    holder = make_check()

    with finished_runs() as runs:
        with holder.lock() as held:
            assert held
            celery_app.send_task(CHECK_TASK)
            wait_for(lambda: runs, message="the locked-out run to finish")
        assert runs[0]["locked"] is True
        assert api.calls("GET", path) == 0

        celery_app.send_task(CHECK_TASK)
        wait_for(lambda: len(runs) == 2, message="the second run to finish")

    assert runs[1]["locked"] is False
    assert (runs[1]["sampled"], runs[1]["agree"]) == (1, 1)
    assert api.calls("GET", path) == 1


def test_beat_schedules_the_check_every_interval_and_drops_stale_runs():
    import celeryconfig
    from webhook_ingest.config import load_settings

    entry = celeryconfig.celery_settings(load_settings())["beat_schedule"]["check-consistency"]

    assert entry["task"] == CHECK_TASK
    assert entry["schedule"] == 300
    assert entry["options"]["expires"] == 300


# -- settings ------------------------------------------------------------------------------


def test_settings_defaults():
    settings = load_settings({})

    assert settings.consistency_check_interval_seconds == 300
    assert settings.consistency_check_sample == 10
    assert settings.consistency_check_window_seconds == 3600


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CONSISTENCY_CHECK_INTERVAL_SECONDS", "0"),
        ("CONSISTENCY_CHECK_INTERVAL_SECONDS", "soon"),
        ("CONSISTENCY_CHECK_SAMPLE", "0"),
        ("CONSISTENCY_CHECK_SAMPLE", "-3"),
        ("CONSISTENCY_CHECK_SAMPLE", "100000"),
        ("CONSISTENCY_CHECK_WINDOW_SECONDS", "0"),
        ("CONSISTENCY_CHECK_WINDOW_SECONDS", "60"),  # nothing would ever have settled
    ],
)
def test_invalid_settings_stop_the_process_naming_the_variable(variable, value):
    with pytest.raises(ConfigError, match=variable):
        load_settings({variable: value})


def test_summary_is_json_for_the_task_result(check):
    assert json.loads(json.dumps(check.run().as_dict()))["locked"] is False

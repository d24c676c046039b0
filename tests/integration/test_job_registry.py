"""The job registry (contract §4, issue 3): `job_mapping:{job_id}` plus our indexes.

Registering writes the shared mapping hash, the reverse index (provider + external
id -> job) and the live-job index in one atomic step; resolving finds the job a
delivery is about, from the URL's job id or from the provider's own id.
"""

from __future__ import annotations

import threading
import time

import pytest

from webhook_ingest.providers import JobRef
from webhook_ingest.state import keys
from webhook_ingest.state.job_registry import JobMismatch, JobNotFound, Registration


@pytest.fixture
def jobs(services):
    return services.jobs


def snapshot(redis_client, job_id, provider, *external_ids):
    """Everything registering may touch, to show that a refusal changed nothing."""
    return {
        "mapping": redis_client.hgetall(keys.job_mapping(job_id)),
        "indexes": {
            external: redis_client.get(keys.external_index(provider, external))
            for external in external_ids
        },
        "live": redis_client.zrange(keys.live_jobs(provider), 0, -1, withscores=True),
    }


# -- register -------------------------------------------------------------------


def test_register_writes_the_mapping_and_both_indexes(jobs, redis_client, job_id):
    before = int(time.time() * 1000)

    outcome = jobs.register(job_id, "replicate", "pred-1")

    after = int(time.time() * 1000)
    assert outcome is Registration.CREATED
    mapping = redis_client.hgetall(keys.job_mapping(job_id))
    assert mapping["external_job_id"] == "pred-1"
    assert mapping["provider"] == "replicate"
    # epoch milliseconds, as integers (contract §4)
    assert mapping["created_at"].isdigit()
    assert before <= int(mapping["created_at"]) <= after
    assert mapping["last_webhook_update"].isdigit()
    assert before <= int(mapping["last_webhook_update"]) <= after
    assert redis_client.get("webhook_ingest:external:replicate:pred-1") == job_id
    assert redis_client.zscore("webhook_ingest:live_jobs:replicate", job_id) is not None
    assert jobs.mapping(job_id) == mapping


def test_the_same_registration_again_exists_and_keeps_created_at(jobs, redis_client, job_id):
    assert jobs.register(job_id, "openai", "resp_1") is Registration.CREATED
    first = snapshot(redis_client, job_id, "openai", "resp_1")
    time.sleep(0.01)  # a later clock, so a rewritten created_at would differ

    assert jobs.register(job_id, "openai", "resp_1") is Registration.EXISTS

    assert snapshot(redis_client, job_id, "openai", "resp_1") == first


def test_the_same_job_with_another_external_id_conflicts(jobs, redis_client, job_id):
    jobs.register(job_id, "openai", "resp_1")
    before = snapshot(redis_client, job_id, "openai", "resp_1", "resp_2")

    assert jobs.register(job_id, "openai", "resp_2") is Registration.CONFLICT

    assert snapshot(redis_client, job_id, "openai", "resp_1", "resp_2") == before
    assert before["indexes"]["resp_2"] is None


def test_the_same_job_with_another_provider_conflicts(jobs, redis_client, job_id):
    jobs.register(job_id, "openai", "shared-id")
    before = snapshot(redis_client, job_id, "openai", "shared-id")

    assert jobs.register(job_id, "replicate", "shared-id") is Registration.CONFLICT

    assert snapshot(redis_client, job_id, "openai", "shared-id") == before
    assert redis_client.get(keys.external_index("replicate", "shared-id")) is None
    assert redis_client.zscore(keys.live_jobs("replicate"), job_id) is None


def test_another_job_with_the_same_external_id_conflicts(jobs, redis_client, job_id):
    other = f"{job_id}-other"
    jobs.register(job_id, "replicate", "pred-1")
    first_before = snapshot(redis_client, job_id, "replicate", "pred-1")

    assert jobs.register(other, "replicate", "pred-1") is Registration.CONFLICT

    assert snapshot(redis_client, job_id, "replicate", "pred-1") == first_before
    assert redis_client.exists(keys.job_mapping(other)) == 0
    assert redis_client.zscore(keys.live_jobs("replicate"), other) is None


def test_the_same_external_id_at_another_provider_is_another_job(jobs, redis_client, job_id):
    other = f"{job_id}-other"
    jobs.register(job_id, "openai", "abc")

    assert jobs.register(other, "replicate", "abc") is Registration.CREATED

    assert redis_client.get(keys.external_index("openai", "abc")) == job_id
    assert redis_client.get(keys.external_index("replicate", "abc")) == other


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_a_job_already_terminal_is_not_put_in_the_live_index(jobs, redis_client, job_id, status):
    redis_client.hset(keys.job_state(job_id), mapping={"status": status, "progress": "100"})

    assert jobs.register(job_id, "replicate", "pred-done") is Registration.CREATED

    assert redis_client.zscore(keys.live_jobs("replicate"), job_id) is None
    assert redis_client.get(keys.external_index("replicate", "pred-done")) == job_id


def test_a_job_still_processing_is_put_in_the_live_index(jobs, redis_client, job_id):
    redis_client.hset(keys.job_state(job_id), mapping={"status": "processing", "progress": "5"})

    jobs.register(job_id, "replicate", "pred-running")

    assert redis_client.zscore(keys.live_jobs("replicate"), job_id) is not None


def test_a_plain_hset_mapping_registered_again_is_indexed(jobs, redis_client, job_id):
    # Other services write job_mapping directly (contract §4); registering the same
    # mapping later is not a conflict and indexes it.
    redis_client.hset(
        keys.job_mapping(job_id), mapping={"external_job_id": "pred-ts", "provider": "replicate"}
    )

    assert jobs.register(job_id, "replicate", "pred-ts") is Registration.EXISTS

    assert redis_client.get(keys.external_index("replicate", "pred-ts")) == job_id
    assert redis_client.zscore(keys.live_jobs("replicate"), job_id) is not None


# -- resolve --------------------------------------------------------------------


def test_resolve_by_job_id_and_by_external_id(jobs, job_id):
    jobs.register(job_id, "replicate", "pred-1")
    expected = JobRef(job_id=job_id, provider="replicate", external_job_id="pred-1")

    assert jobs.resolve("replicate", job_id, "pred-1") == expected
    assert jobs.resolve("replicate", None, "pred-1") == expected


def test_resolve_an_unknown_job_is_not_found(jobs, job_id):
    with pytest.raises(JobNotFound):
        jobs.resolve("replicate", job_id, "pred-1")
    with pytest.raises(JobNotFound):
        jobs.resolve("openai", None, "resp_unknown")


def test_resolve_a_job_of_another_provider_is_a_mismatch(jobs, job_id):
    jobs.register(job_id, "openai", "shared-id")

    with pytest.raises(JobMismatch):
        jobs.resolve("replicate", job_id, "shared-id")


def test_resolve_another_external_id_is_a_mismatch(jobs, job_id):
    jobs.register(job_id, "replicate", "pred-1")

    with pytest.raises(JobMismatch):
        jobs.resolve("replicate", job_id, "pred-2")


def test_resolve_by_external_id_does_not_cross_providers(jobs, job_id):
    jobs.register(job_id, "openai", "shared-id")

    with pytest.raises(JobNotFound):
        jobs.resolve("replicate", None, "shared-id")


def test_a_mapping_written_by_plain_hset_resolves_by_job_id(jobs, redis_client, job_id):
    redis_client.hset(
        keys.job_mapping(job_id), mapping={"external_job_id": "pred-ts", "provider": "replicate"}
    )

    assert jobs.resolve("replicate", job_id, "pred-ts") == JobRef(
        job_id=job_id, provider="replicate", external_job_id="pred-ts"
    )
    with pytest.raises(JobMismatch):
        jobs.resolve("replicate", job_id, "pred-other")


@pytest.mark.parametrize(
    "mapping",
    [{"provider": "replicate"}, {"provider": "replicate", "external_job_id": ""}],
    ids=["no-external-id", "empty-external-id"],
)
def test_a_mapping_without_an_external_id_is_not_matched_yet(jobs, redis_client, job_id, mapping):
    # Finding 3 of issue 14: a missing id matched any delivery, so one job's result
    # could be written into another. Not a match, and not a mismatch either: the
    # writer may add the id in a moment.
    redis_client.hset(keys.job_mapping(job_id), mapping=mapping)
    redis_client.set(keys.external_index("replicate", "pred-x"), job_id)

    with pytest.raises(JobNotFound):
        jobs.resolve("replicate", job_id, "pred-x")
    with pytest.raises(JobNotFound):
        jobs.resolve("replicate", None, "pred-x")


# -- concurrency ----------------------------------------------------------------


def test_concurrent_registrations_of_one_job_have_exactly_one_winner(jobs, redis_client, job_id):
    contenders = [f"pred-{n}" for n in range(20)]
    outcomes: dict[str, Registration] = {}
    start = threading.Barrier(len(contenders))

    def register(external_id):
        start.wait()
        outcomes[external_id] = jobs.register(job_id, "replicate", external_id)

    threads = [threading.Thread(target=register, args=(ext,)) for ext in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(outcomes) == len(contenders)
    winners = [ext for ext, outcome in outcomes.items() if outcome is Registration.CREATED]
    assert len(winners) == 1, outcomes
    assert all(
        outcome is Registration.CONFLICT for ext, outcome in outcomes.items() if ext != winners[0]
    )
    winner = winners[0]
    mapping = redis_client.hgetall(keys.job_mapping(job_id))
    assert mapping["external_job_id"] == winner
    assert mapping["provider"] == "replicate"
    indexed = {ext: redis_client.get(keys.external_index("replicate", ext)) for ext in contenders}
    assert indexed == {ext: (job_id if ext == winner else None) for ext in contenders}
    assert jobs.resolve("replicate", None, winner).job_id == job_id


def test_an_external_id_already_leading_to_another_job_is_a_conflict_even_for_a_hset_mapping(
    services, redis_client
):
    # Job B was registered for pred-shared; another service then wrote job A's
    # mapping to the same prediction with a plain HSET.
    assert services.jobs.register("job-b", "replicate", "pred-shared") is Registration.CREATED
    redis_client.hset(
        "job_mapping:job-a", mapping={"external_job_id": "pred-shared", "provider": "replicate"}
    )

    assert services.jobs.register("job-a", "replicate", "pred-shared") is Registration.CONFLICT
    assert redis_client.get("webhook_ingest:external:replicate:pred-shared") == "job-b"

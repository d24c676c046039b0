"""The orphan poller (contract §2, §4, §5; README "Orphan recovery").

A job whose webhook never came is found in its provider's live index
(`webhook_ingest:live_jobs:{provider}`, scored by when we last heard of it),
asked about at the provider's API (the fake API server here) and recovered
through `StateStore.apply` with `source: orphan_poll`.

Time is controlled by passing `now_ms=` to `take_due`/`poll`, with settings given
through an explicit environment; the tests that go through the real worker keep
the defaults and make a job stale by writing its score in the live index.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import pytest
import redis

from tests.conftest import OPENAI_SECRET
from tests.support import body_of, signed_headers, wait_for
from webhook_ingest.operations.adoption import MappingAdoption
from webhook_ingest.operations.orphan_poller import OrphanPoller, PollOutcome
from webhook_ingest.providers import PROVIDER_CLASSES
from webhook_ingest.services import Services
from webhook_ingest.state import keys
from webhook_ingest.state.job_update import COMPLETED, SOURCE_WEBHOOK, JobStateUpdate

AFTER_S, INTERVAL_S, GRACE_S = 300, 60, 600
AFTER, INTERVAL, GRACE = AFTER_S * 1000, INTERVAL_S * 1000, GRACE_S * 1000
HOUR = 3600 * 1000  # README: failed polls are retried "at most an hour apart"
PROVIDERS = ("openai", "replicate", "stability")


# -- helpers -----------------------------------------------------------------------


@dataclass
class Poller:
    poller: OrphanPoller
    services: Services
    adoption: MappingAdoption

    def take_due(self, now_ms: int) -> dict[str, list[str]]:
        return self.poller.take_due(now_ms=now_ms)

    def poll(self, provider: str, job_id: str, now_ms: int) -> PollOutcome:
        return self.poller.poll(provider, job_id, now_ms=now_ms)


@pytest.fixture
def make_poller(services_with, api):
    """A poller on the test database (or `redis_url`, state and broker) with the given
    settings (defaults: AFTER_S / INTERVAL_S / GRACE_S)."""

    def make(redis_url: str | None = None, **settings: object) -> Poller:
        defaults = {
            "ORPHAN_AFTER_SECONDS": AFTER_S,
            "ORPHAN_POLL_INTERVAL_SECONDS": INTERVAL_S,
            "ORPHAN_NOT_FOUND_GRACE_SECONDS": GRACE_S,
        }
        on = {"REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url} if redis_url else {}
        services = services_with(**{**defaults, **settings, **on})
        return Poller(OrphanPoller(services), services, MappingAdoption(services))

    return make


@pytest.fixture
def orphans(make_poller) -> Poller:
    return make_poller()


def live(redis_client, provider: str) -> dict[str, float]:
    return dict(redis_client.zrange(keys.live_jobs(provider), 0, -1, withscores=True))


def score(redis_client, provider: str, job_id: str) -> float | None:
    return redis_client.zscore(keys.live_jobs(provider), job_id)


def registered_at(redis_client, job_id: str) -> int:
    return int(redis_client.hget(keys.job_mapping(job_id), "created_at"))


def state_of(redis_client, job_id: str) -> dict[str, str]:
    return redis_client.hgetall(keys.job_state(job_id))


def failures(redis_client, job_id: str) -> str | None:
    return redis_client.hget(keys.POLL_FAILURES, job_id)


def ext(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# -- what each provider's API answers for a finished job (providers.md) -------------


@dataclass(frozen=True)
class Finished:
    external_id: str
    path: str
    answer: tuple
    result: object


def finished(provider: str) -> Finished:
    if provider == "openai":
        rid = ext("resp")
        output = [{"type": "message", "content": [{"type": "output_text", "text": "a cat"}]}]
        body = {"id": rid, "object": "response", "status": "completed", "output": output}
        return Finished(rid, f"/v1/responses/{rid}", (200, body), output)
    if provider == "replicate":
        pid = ext("pred")
        output = ["https://replicate.delivery/out-0.png"]
        body = {"id": pid, "status": "succeeded", "output": output, "logs": "100%|##| 1/1\n"}
        return Finished(pid, f"/v1/predictions/{pid}", (200, body), output)
    gid = ext("gen")
    body = {"image": "aGVsbG8=", "finish_reason": "SUCCESS", "seed": 42}
    return Finished(gid, f"/v2beta/results/{gid}", (200, body), body)


def poll_path(provider: str, external_id: str) -> str:
    return {
        "openai": f"/v1/responses/{external_id}",
        "replicate": f"/v1/predictions/{external_id}",
        "stability": f"/v2beta/results/{external_id}",
    }[provider]


# -- take_due: which jobs a tick polls ------------------------------------------------


def test_a_stale_job_is_due_once_per_interval(orphans, redis_client, job_id):
    orphans.services.jobs.register(job_id, "replicate", ext("pred"))
    heard = registered_at(redis_client, job_id)
    assert score(redis_client, "replicate", job_id) == heard

    assert orphans.take_due(now_ms=heard + AFTER - 1) == {}  # not stale yet
    now = heard + AFTER
    assert orphans.take_due(now_ms=now) == {"replicate": [job_id]}

    # However many ticks (or beats) run within the interval, it is not polled again ...
    assert orphans.take_due(now_ms=now) == {}
    assert orphans.take_due(now_ms=now + INTERVAL - 1) == {}
    assert score(redis_client, "replicate", job_id) == now - AFTER + INTERVAL
    # ... and it is asked about again one interval later while nothing is heard of it.
    assert orphans.take_due(now_ms=now + INTERVAL) == {"replicate": [job_id]}
    assert orphans.take_due(now_ms=now + INTERVAL) == {}
    assert orphans.take_due(now_ms=now + 2 * INTERVAL) == {"replicate": [job_id]}


def test_a_job_with_a_recent_update_is_not_due(orphans, redis_client):
    quiet, heard_from = "job-quiet", "job-heard-from"
    orphans.services.jobs.register(quiet, "replicate", ext("pred"))
    orphans.services.jobs.register(heard_from, "replicate", ext("pred"))
    registered = registered_at(redis_client, quiet)
    heard = registered + 30_000  # a webhook half a minute after the submit
    update = JobStateUpdate(
        job_id=heard_from,
        status="processing",
        progress=30,
        provider="replicate",
        source=SOURCE_WEBHOOK,
        updated_at=heard,
    )
    orphans.services.state.apply(update, delivery_id="msg_recent")

    assert orphans.take_due(now_ms=registered + AFTER) == {"replicate": [quiet]}
    assert orphans.take_due(now_ms=heard + AFTER - 1) == {}
    assert orphans.take_due(now_ms=heard + AFTER) == {"replicate": [heard_from]}


def test_a_terminal_job_is_never_due(orphans, redis_client, job_id):
    orphans.services.jobs.register(job_id, "openai", ext("resp"))
    done = JobStateUpdate(
        job_id=job_id, status=COMPLETED, result="x", provider="openai", source=SOURCE_WEBHOOK
    )
    orphans.services.state.apply(done, delivery_id="msg_done")

    heard = registered_at(redis_client, job_id)
    for later in (AFTER, AFTER + INTERVAL, 30 * 24 * HOUR):
        assert orphans.take_due(now_ms=heard + later) == {}
    assert score(redis_client, "openai", job_id) is None


@pytest.mark.parametrize(
    ("per_minute", "interval_s", "per_tick"),
    [(10, 60, 10), (10, 30, 5), (120, 60, 120)],
)
def test_a_tick_polls_at_most_the_providers_budget(
    make_poller, redis_client, per_minute, interval_s, per_tick
):
    orphans = make_poller(
        ORPHAN_POLLS_PER_MINUTE=per_minute, ORPHAN_POLL_INTERVAL_SECONDS=interval_s
    )
    now = 10_000_000_000
    stale = now - AFTER - 1
    openai_jobs = [f"job-openai-{i:03d}" for i in range(per_tick * 2 + per_tick // 2)]
    replicate_jobs = [f"job-replicate-{i:03d}" for i in range(3)]
    redis_client.zadd(keys.live_jobs("openai"), {j: stale - i for i, j in enumerate(openai_jobs)})
    redis_client.zadd(keys.live_jobs("replicate"), dict.fromkeys(replicate_jobs, stale))

    ticks = [orphans.take_due(now_ms=now) for _ in range(4)]

    # Oldest first, the budget per provider per tick; the other provider has its own.
    assert [len(t.get("openai", [])) for t in ticks] == [per_tick, per_tick, per_tick // 2, 0]
    assert ticks[0]["openai"] == sorted(openai_jobs, reverse=True)[:per_tick]
    assert sorted(ticks[0]["replicate"]) == replicate_jobs
    assert all("replicate" not in t for t in ticks[1:])
    taken = [j for t in ticks for j in t.get("openai", [])]
    assert sorted(taken) == sorted(openai_jobs)  # every stale job once, none twice


# -- one poll: recovery through each provider's API ------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_orphan_is_recovered_from_the_providers_api(
    provider, orphans, redis_client, api, job_id
):
    job = finished(provider)
    api.respond("GET", job.path, job.answer)
    orphans.services.jobs.register(job_id, provider, job.external_id)
    now = registered_at(redis_client, job_id) + AFTER

    assert orphans.take_due(now_ms=now) == {provider: [job_id]}
    assert orphans.poll(provider, job_id, now_ms=now) is PollOutcome.APPLIED

    state = state_of(redis_client, job_id)
    assert state["status"] == "completed"
    assert state["progress"] == "100"
    assert state["source"] == "orphan_poll"
    assert state["provider"] == provider
    assert state["external_job_id"] == job.external_id
    assert json.loads(state["result"]) == job.result
    assert api.calls("GET", job.path) == 1
    asked = next(r for r in api.requests if r["path"] == job.path)
    assert asked["headers"]["Accept"] == "application/json"
    # Terminal: out of the live index, never polled again.
    assert score(redis_client, provider, job_id) is None
    assert orphans.take_due(now_ms=now + 10 * INTERVAL) == {}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_beat_task_recovers_a_stale_job_through_the_worker(
    provider, services, worker, redis_client, api, job_id
):
    from workers.tasks import poll_orphans

    job, recent = finished(provider), finished(provider)
    api.respond("GET", job.path, job.answer)
    api.respond("GET", recent.path, recent.answer)
    services.jobs.register(job_id, provider, job.external_id)
    services.jobs.register(f"{job_id}-recent", provider, recent.external_id)
    redis_client.zadd(keys.live_jobs(provider), {job_id: 0})  # not heard of since 1970

    poll_orphans.delay()

    state = wait_for(
        lambda: (
            state_of(redis_client, job_id).get("source") == "orphan_poll"
            and state_of(redis_client, job_id)
        ),
        message=f"{provider} orphan to be recovered by the worker",
    )
    assert state["status"] == "completed"
    assert json.loads(state["result"]) == job.result
    assert score(redis_client, provider, job_id) is None
    # The job heard of just now was not stale: not polled, still live.
    assert api.calls("GET", recent.path) == 0
    assert score(redis_client, provider, f"{job_id}-recent") is not None
    assert not state_of(redis_client, f"{job_id}-recent")


# -- provider errors -------------------------------------------------------------------

ERRORS = [
    pytest.param((500, {"error": "internal"}), id="500"),
    pytest.param((429, {"error": "rate limited"}, {"Retry-After": "7"}), id="429-retry-after"),
    pytest.param((502, {"error": "bad gateway"}), id="502"),
]


@pytest.mark.parametrize("error", ERRORS)
def test_failed_polls_back_off_exponentially_until_the_provider_answers(
    error, orphans, redis_client, api, job_id
):
    job = finished("replicate")
    api.respond("GET", job.path, error)  # every answer, until told otherwise
    orphans.services.jobs.register(job_id, "replicate", job.external_id)
    now = registered_at(redis_client, job_id) + AFTER

    for attempt, intervals in ((1, 1), (2, 2), (3, 4)):
        assert orphans.take_due(now_ms=now) == {"replicate": [job_id]}
        assert orphans.poll("replicate", job_id, now_ms=now) is PollOutcome.BACKING_OFF
        assert failures(redis_client, job_id) == str(attempt)
        assert not state_of(redis_client, job_id)  # an error is not a state
        assert score(redis_client, "replicate", job_id) is not None  # still live
        next_poll = now + intervals * INTERVAL
        assert orphans.take_due(now_ms=next_poll - 1) == {}
        now = next_poll

    api.respond("GET", job.path, job.answer)
    assert orphans.take_due(now_ms=now) == {"replicate": [job_id]}
    assert orphans.poll("replicate", job_id, now_ms=now) is PollOutcome.APPLIED

    assert state_of(redis_client, job_id)["status"] == "completed"
    assert state_of(redis_client, job_id)["source"] == "orphan_poll"
    assert failures(redis_client, job_id) is None
    assert not redis_client.exists(keys.POLL_FAILURES)
    assert score(redis_client, "replicate", job_id) is None


def test_backoff_between_failed_polls_is_capped_at_an_hour(orphans, redis_client, api, job_id):
    job = finished("openai")
    api.respond("GET", job.path, (503, {"error": "unavailable"}))
    orphans.services.jobs.register(job_id, "openai", job.external_id)
    now = registered_at(redis_client, job_id) + AFTER
    expected = [1, 2, 4, 8, 16, 32, 60, 60, 60]  # intervals; 60 intervals = the hour cap

    for intervals in expected:
        assert orphans.poll("openai", job_id, now_ms=now) is PollOutcome.BACKING_OFF
        next_poll = now + intervals * INTERVAL
        assert orphans.take_due(now_ms=next_poll - 1) == {}
        assert orphans.take_due(now_ms=next_poll) == {"openai": [job_id]}
        now = next_poll

    print(f"\nintervals between failed polls: {expected}")
    assert expected[-1] * INTERVAL == HOUR
    assert failures(redis_client, job_id) == str(len(expected))


def test_a_429_retry_after_longer_than_the_backoff_is_honoured(orphans, redis_client, api, job_id):
    job = finished("openai")
    api.respond("GET", job.path, (429, {"error": "slow down"}, {"Retry-After": "600"}))
    orphans.services.jobs.register(job_id, "openai", job.external_id)
    now = registered_at(redis_client, job_id) + AFTER

    assert orphans.poll("openai", job_id, now_ms=now) is PollOutcome.BACKING_OFF

    # README: "a 429's Retry-After becomes the next attempt's delay rather than a sleep".
    assert orphans.take_due(now_ms=now + 600_000 - 1) == {}
    assert orphans.take_due(now_ms=now + 600_000) == {"openai": [job_id]}


# -- 404: the provider does not know the job ------------------------------------------


def test_a_404_within_the_grace_period_backs_off_and_later_fails_the_job(
    orphans, redis_client, api, job_id
):
    job = finished("replicate")
    api.respond("GET", job.path, (404, {"detail": "Not found."}))
    orphans.services.jobs.register(job_id, "replicate", job.external_id)
    created = registered_at(redis_client, job_id)

    for now in (created + AFTER, created + GRACE - 1):
        assert orphans.poll("replicate", job_id, now_ms=now) is PollOutcome.BACKING_OFF
        assert not state_of(redis_client, job_id)
        assert score(redis_client, "replicate", job_id) is not None

    assert orphans.poll("replicate", job_id, now_ms=created + GRACE) is PollOutcome.NOT_FOUND

    state = state_of(redis_client, job_id)
    assert state["status"] == "failed"
    assert "404" in state["error_message"]
    assert job.external_id in state["error_message"]
    assert state["source"] == "orphan_poll"
    assert score(redis_client, "replicate", job_id) is None
    assert not redis_client.exists(keys.POLL_FAILURES)


def test_a_404_for_a_mapping_without_times_counts_from_the_first_404(
    orphans, redis_client, api, job_id
):
    external_id = ext("gen")
    api.respond("GET", poll_path("stability", external_id), (404, {"errors": ["not found"]}))
    redis_client.hset(
        keys.job_mapping(job_id), mapping={"external_job_id": external_id, "provider": "stability"}
    )
    redis_client.zadd(keys.live_jobs("stability"), {job_id: 0})
    first = 1_900_000_000_000  # long after anything the mapping could say

    for now in (first, first + GRACE - 1):
        assert orphans.poll("stability", job_id, now_ms=now) is PollOutcome.BACKING_OFF
        assert not state_of(redis_client, job_id)

    assert orphans.poll("stability", job_id, now_ms=first + GRACE) is PollOutcome.NOT_FOUND
    state = state_of(redis_client, job_id)
    assert state["status"] == "failed"
    assert "404" in state["error_message"]
    assert score(redis_client, "stability", job_id) is None
    assert not redis_client.exists(keys.POLL_FAILURES)


# -- jobs that finished elsewhere or were forgotten ---------------------------------


def test_a_job_already_terminal_leaves_the_live_index_without_asking(
    orphans, redis_client, api, job_id
):
    job = finished("replicate")
    api.respond("GET", job.path, job.answer)
    orphans.services.jobs.register(job_id, "replicate", job.external_id)
    # Another part of the job system finished it without going through us.
    redis_client.hset(keys.job_state(job_id), mapping={"status": "failed", "progress": 0})
    now = registered_at(redis_client, job_id) + AFTER

    assert orphans.take_due(now_ms=now) == {"replicate": [job_id]}
    assert orphans.poll("replicate", job_id, now_ms=now) is PollOutcome.FINISHED

    assert score(redis_client, "replicate", job_id) is None
    assert api.calls("GET", job.path) == 0
    assert state_of(redis_client, job_id)["status"] == "failed"


@pytest.mark.parametrize("how", ["deleted", "other-provider", "no-external-id"])
def test_a_forgotten_job_leaves_the_live_index(how, orphans, redis_client, api, job_id):
    job = finished("openai")
    api.respond("GET", job.path, job.answer)
    orphans.services.jobs.register(job_id, "openai", job.external_id)
    if how == "deleted":
        redis_client.delete(keys.job_mapping(job_id))
    elif how == "other-provider":
        redis_client.hset(keys.job_mapping(job_id), "provider", "replicate")
    else:
        redis_client.hdel(keys.job_mapping(job_id), "external_job_id")
    assert orphans.poll("openai", job_id, now_ms=10**13) is PollOutcome.FORGOTTEN

    assert score(redis_client, "openai", job_id) is None
    assert api.calls("GET", job.path) == 0
    assert not state_of(redis_client, job_id)


# -- adoption of mappings other services wrote with a plain HSET ---------------------


def hset_mapping(client, job_id: str, provider: str, external_id: str, **times: int) -> None:
    """What the TypeScript connectors do: no index, no reverse lookup, just the hash."""
    fields = {"external_job_id": external_id, "provider": provider}
    fields.update({name: str(value) for name, value in times.items()})
    client.hset(keys.job_mapping(job_id), mapping=fields)


@pytest.mark.parametrize("times", ["created_at", "last_webhook_update"])
def test_an_hset_mapping_is_adopted_into_the_live_index(times, orphans, redis_client, job_id):
    created, last_update = 1_700_000_000_000, 1_700_000_900_000
    external_id = ext("resp")
    if times == "created_at":
        hset_mapping(redis_client, job_id, "openai", external_id, created_at=created)
    else:
        hset_mapping(
            redis_client,
            job_id,
            "openai",
            external_id,
            created_at=created,
            last_webhook_update=last_update,
        )
    assert live(redis_client, "openai") == {}

    adoption = orphans.adoption.adopt()

    assert adoption.adopted == 1
    expected = created if times == "created_at" else last_update
    assert live(redis_client, "openai") == {job_id: expected}
    assert redis_client.get(keys.external_index("openai", external_id)) == job_id
    # Due as any other job once stale; adopting again changes nothing.
    assert orphans.take_due(now_ms=expected + AFTER) == {"openai": [job_id]}
    assert orphans.adoption.adopt().adopted == 0
    assert live(redis_client, "openai") == {job_id: expected + INTERVAL}


def test_an_adopted_openai_job_is_matched_by_its_webhook(
    orphans, client, worker, redis_client, api, job_id
):
    job = finished("openai")
    api.respond("GET", job.path, job.answer)
    hset_mapping(redis_client, job_id, "openai", job.external_id, created_at=1_700_000_000_000)
    assert redis_client.get(keys.external_index("openai", job.external_id)) is None

    orphans.adoption.adopt()
    event = {
        "object": "event",
        "id": f"evt_{uuid.uuid4().hex}",
        "type": "response.completed",
        "created_at": 1750287018,
        "data": {"id": job.external_id},
    }
    body = body_of(event)
    answer = client.post("/webhook/openai", data=body, headers=signed_headers(OPENAI_SECRET, body))
    assert answer.status_code == 202, answer.get_json()

    state = wait_for(
        lambda: (
            state_of(redis_client, job_id).get("status") == "completed"
            and state_of(redis_client, job_id)
        ),
        message="the webhook for the adopted job to be applied",
    )
    assert state["source"] == "webhook"
    assert json.loads(state["result"]) == job.result
    assert score(redis_client, "openai", job_id) is None


@pytest.mark.parametrize("why", ["terminal", "unknown-provider"])
def test_a_mapping_that_needs_no_polling_is_not_adopted(why, orphans, redis_client, job_id):
    external_id = ext("x")
    provider = "midjourney" if why == "unknown-provider" else "replicate"
    hset_mapping(redis_client, job_id, provider, external_id, created_at=1_700_000_000_000)
    if why == "terminal":
        redis_client.hset(keys.job_state(job_id), mapping={"status": "completed", "progress": 100})

    adoption = orphans.adoption.adopt()

    assert adoption.adopted == 0
    assert all(not live(redis_client, p) for p in (*PROVIDERS, provider))
    assert not redis_client.keys("webhook_ingest:live_jobs:*")


def write_mappings(store: redis.Redis, count: int) -> None:
    with store.pipeline(transaction=False) as pipe:
        for i in range(count):
            pipe.hset(
                keys.job_mapping(f"job-{i:05d}"),
                mapping={
                    "external_job_id": f"ext-{i:05d}",
                    "provider": PROVIDERS[i % 3],
                    "created_at": str(1_700_000_000_000 + i),
                },
            )
        pipe.execute()


def test_adoption_walks_a_large_keyspace_over_several_ticks(make_poller, own_redis):
    budget, mappings = 1000, 5000
    orphans = make_poller(own_redis.url, ADOPTION_SCAN_BUDGET=budget)
    store = redis.Redis.from_url(own_redis.url, decode_responses=True)
    write_mappings(store, mappings)

    def tracked() -> int:
        return sum(store.zcard(keys.live_jobs(p)) for p in PROVIDERS)

    per_tick, cursors = [], []
    for _ in range(20):
        store.config_resetstat()
        adoption = orphans.adoption.adopt()
        scans = store.info("commandstats").get("cmdstat_scan", {}).get("calls", 0)
        assert scans <= budget // 1000  # each SCAN examines about 1,000 keys
        per_tick.append(adoption.adopted)
        cursors.append(int(store.get(keys.ADOPTION_CURSOR)))
        assert cursors[-1] == adoption.cursor  # where the next tick resumes
        if tracked() == mappings:
            break

    print(f"\nadopted per tick (budget {budget}): {per_tick}; cursors: {cursors}")
    assert per_tick[0] < mappings  # one tick does not walk the whole keyspace
    assert cursors[0] != 0
    assert tracked() == mappings
    assert sum(per_tick) == mappings  # each mapping adopted once
    # The walk covers the keyspace, which adoption itself doubles (reverse indexes).
    assert len(per_tick) <= 2 * mappings // budget + 2
    last = mappings - 1
    assert (
        store.get(keys.external_index(PROVIDERS[last % 3], f"ext-{last:05d}")) == f"job-{last:05d}"
    )
    store.close()


def test_a_small_adoption_budget_bounds_the_keys_examined_per_tick(make_poller, own_redis):
    budget = 100  # the smallest the setting accepts
    orphans = make_poller(own_redis.url, ADOPTION_SCAN_BUDGET=budget)
    store = redis.Redis.from_url(own_redis.url, decode_responses=True)
    write_mappings(store, 5000)

    adoption = orphans.adoption.adopt()

    print(f"\nbudget {budget}: one tick examined {adoption.scanned}, adopted {adoption.adopted}")
    # SCAN's COUNT is a hint: allow twice the budget, not ten times.
    assert adoption.adopted <= 2 * budget
    store.close()


# -- the cost of a tick -----------------------------------------------------------


def commands_of_one_tick(orphans: Poller, store: redis.Redis, now: int) -> tuple[dict, dict]:
    orphans.take_due(now_ms=1)  # loads the script; nothing is due at 1970
    store.config_resetstat()
    due = orphans.take_due(now_ms=now)
    stats = store.info("commandstats")
    calls = {
        name.removeprefix("cmdstat_"): stat["calls"]
        for name, stat in stats.items()
        if not name.startswith(("cmdstat_info", "cmdstat_config"))
    }
    return due, calls


def track(store: redis.Redis, total: int, stale: int, now: int) -> None:
    """`total` live jobs across two providers, `stale` of them not heard of for long."""
    store.flushall()
    with store.pipeline(transaction=False) as pipe:
        for start in range(0, total - stale, 10_000):
            chunk = range(start, min(start + 10_000, total - stale))
            # heard of within the last minute
            pipe.zadd(
                keys.live_jobs(PROVIDERS[start // 10_000 % 2]),
                {f"job-{i:06d}": now - i % 60_000 for i in chunk},
            )
        for i in range(stale):
            job_id, provider = f"stale-{i}", PROVIDERS[i % 2]
            pipe.zadd(keys.live_jobs(provider), {job_id: now - AFTER - 1000 * (i + 1)})
            pipe.hset(
                keys.job_mapping(job_id),
                mapping={"external_job_id": f"ext-{i}", "provider": provider},
            )
        pipe.execute()
    assert sum(store.zcard(keys.live_jobs(p)) for p in PROVIDERS) == total


def test_a_tick_costs_the_same_with_1k_or_100k_tracked_jobs(make_poller, own_redis):
    orphans = make_poller(own_redis.url)
    store = redis.Redis.from_url(own_redis.url, decode_responses=True)
    now = 1_800_000_000_000

    measured = {}
    for total in (1_000, 100_000):
        track(store, total, stale=10, now=now)
        due, calls = commands_of_one_tick(orphans, store, now)
        assert sorted(j for jobs in due.values() for j in jobs) == [f"stale-{i}" for i in range(10)]
        measured[total] = calls
        print(f"\n{total:>7} tracked jobs, 10 stale: {sum(calls.values())} commands {calls}")

    assert measured[100_000] == measured[1_000]
    for forbidden in ("scan", "keys", "zrange", "zcard", "zscan"):
        assert forbidden not in measured[100_000]
    # One bounded range read per provider, one reschedule per stale job.
    assert measured[100_000]["zrangebyscore"] == len(PROVIDER_CLASSES)
    assert measured[100_000]["zadd"] == 10
    store.close()


def test_a_job_finished_by_a_webhook_forgets_its_failed_polls(services, redis_client, job_id):
    from webhook_ingest.state.job_update import JobStateUpdate

    services.jobs.register(job_id, "replicate", "pred-flaky")
    redis_client.hset(keys.POLL_FAILURES, mapping={job_id: 3, f"{job_id}:first_404": 1})

    services.state.apply(
        JobStateUpdate(job_id=job_id, status="completed", provider="replicate", source="webhook"),
        "msg-final",
    )

    assert redis_client.hget(keys.POLL_FAILURES, job_id) is None
    assert redis_client.hget(keys.POLL_FAILURES, f"{job_id}:first_404") is None

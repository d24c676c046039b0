"""Soak: 10,000 deliveries over 1,000 jobs at a steady rate, the worker restarted once.

Each job is a Replicate prediction with ten events (`starting`, eight
`processing` with rising tqdm progress, a terminal `succeeded`, `failed` or
`canceled`), 10,000 distinct deliveries in all, and 5 % of them resent with the
same `webhook-id`. Jobs start at random moments of the run and each one's events
follow a few seconds apart with jitter, so jobs overlap and some of a job's
events arrive out of order. They go out at a steady RATE through the real
gunicorn (two processes) and worker (two processes) on an AOF Redis that is
both state store and broker. Half-way through the stream the worker is stopped
and a new one started: with SIGTERM (warm shutdown: what a deploy does), and in
a second run with SIGKILL (a crash or an OOM kill: its unacknowledged
deliveries come back after the 10 s visibility timeout and kombu's restore
sweep).

**What SIGKILL takes, and what brings it back.** kombu's Redis transport takes a
message with BRPOP and records it as unacknowledged (ZADD unacked_index, HSET
unacked) in a second round trip (kombu/transport/redis.py: `_brpop_read`,
`QoS.append`). A worker killed between the two removes the message from the
queue without a trace on the broker (celery/kombu#305, celery/celery#7950;
measured before the journal: 1 delivery lost in two of three SIGKILL runs). The
delivery's journal record stays until a worker records its outcome, and beat's
redrive publishes it again once it is overdue (REDRIVE_AFTER here), so the
SIGKILL run must lose nothing either.

Asserted: every delivery acknowledged; every job in the state its terminal
event implies; lost = 0 (every acknowledged delivery has an outcome in its
job's `job_events`), duplicated = 0 (no delivery id applied twice); the broker
drained. Then memory and retention.

**Memory bound.** `used_memory` after the soak minus before it (processes up,
no jobs yet) must stay under

    JOBS × (515 + 512 + 20 × 200) + DELIVERIES × 416 + 2 MiB

- 515 B per tracked job: mapping hash, reverse index, live-set member
  (docs/benchmarks.md, measured; for a finished job its `finished_jobs` member
  replaces the live one);
- 512 B for the job's `job_state` hash (nine short fields: listpack-encoded);
- `job_events:{job_id}` keeps at most 20 observations (state.EVENTS_KEEP) of
  about 150-200 B each;
- 416 B per remembered delivery id: the receiver's claim (176 B) and the
  worker's applied record (240 B) (docs/benchmarks.md);
- 2 MiB fixed: Redis' own buffers (AOF rewrite and client buffers, the scripts
  cache), kombu's bindings, the dicts' growth in powers of two.

With 1,000 jobs and 10,000 ids that is about 11.2 MiB. What it excludes on
purpose: the broker's messages (about 1.5 KB each: 15 MB if the 10,000 stayed
queued or unacknowledged) and anything else kept per delivery — a leak of
either breaks it.

**Retention.** Keys kept per delivery or per observation must expire by
themselves: the seen-delivery buckets, `job_events:*`, `finished_jobs:*` all
have a TTL; the per-id claim keys and per-job `applied:*` sets of earlier
versions are not written at all. Without a TTL only: the job system's own `job_state:*` and
`job_mapping:*` (contract §4, theirs to delete), the reverse index
`external:*` (one per job, written with the mapping), and the fixed keys:
kombu's bindings and the provider's live-job index. Anything else without a TTL fails the test.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time

import pytest

from tests.faults.fault_harness import (
    JOURNAL_ENV,
    REDRIVE_AFTER,
    Ledger,
    System,
    new_jobs,
    register_jobs,
    report,
    tally,
)
from tests.faults.fault_sequences import (
    Answers,
    family_of,
    key_census,
    plan_job,
    resend_unacknowledged,
    send_all,
    wait_queue_empty,
)
from tests.support import seen_buckets
from webhook_ingest.state import keys

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.faults,
    # JSON logs carry each delivery's id: a lost one can be traced through them
    pytest.mark.system_env(LOG_FORMAT="json", **JOURNAL_ENV),
]

JOBS = 1000
EVENTS_PER_JOB = 10  # starting + 8 processing + terminal
DUPLICATE_SHARE = 0.05
RATE = float(os.environ.get("SOAK_RATE", "120"))  # deliveries per second
DELIVERY_ID_BYTES, TRACKED_JOB_BYTES = 416, 515  # docs/benchmarks.md
STATE_BYTES, EVENT_BYTES, EVENTS_KEEP = 512, 200, 20
FIXED_BYTES = 2 * 1024 * 1024
# Without a TTL by design (see the docstring); everything else must expire.
NO_TTL_PER_JOB = {"job_state:*", "job_mapping:*", "webhook_ingest:external:*"}
NO_TTL_FIXED = {
    "_kombu.binding.*",
    "_kombu.binding_deadlines",
    "_kombu.binding_permanent.webhook_ingest",
    "_kombu.binding_permanent.webhook_ingest.unmatched",  # the unmatched deliveries' queue
    keys.live_jobs("replicate"),  # one per provider; empty (gone) once every job finished
    # beat runs (the journal's redrive): its schedule, one key per entry, its lock,
    # and what its other ticks keep: one cursor, one hash of failing polls
    "webhook_ingest:redbeat*",
    keys.ADOPTION_CURSOR,
    keys.POLL_FAILURES,
}
MUST_EXPIRE = {
    "webhook_ingest:seen:*",
    "webhook_ingest:job_events:*",
    keys.finished_jobs("replicate"),
}
# What versions before issue 16 kept per delivery: a claim key per id and a per-job
# applied set. This version reads them during an upgrade and writes neither for a
# journaled delivery, so the soak must leave none behind.
NO_LONGER_WRITTEN = {
    "webhook_ingest:delivery:*",
    "webhook_ingest:applied:*",
}


def schedule(rng: random.Random, plans, seconds: float) -> list:
    """All sends in time order: a job starts at a random moment of the first 85 %
    of the run and its events follow about 2 % of the run apart, ±1.5 %, so
    neighbours may swap; a resend comes up to 2 s after its original."""
    timed = []
    step = 0.02 * seconds
    for plan in plans:
        start = rng.uniform(0, 0.85 * seconds - EVENTS_PER_JOB * step)
        for index, delivery in enumerate(plan.deliveries):
            at = start + index * step + rng.uniform(-0.75, 0.75) * step
            timed.append((at, delivery))
            if rng.random() < DUPLICATE_SHARE:
                timed.append((at + rng.uniform(0, 2), delivery))
    timed.sort(key=lambda pair: pair[0])
    return [delivery for _, delivery in timed]


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_soak_ten_thousand_deliveries_with_a_worker_restart(store, system, signal_name):
    seed = int(os.environ.get("FAULTS_SEED") or random.randrange(2**32))
    print(f"\nsoak seed: {seed} (FAULTS_SEED={seed} reruns this sequence)")
    rng = random.Random(seed)
    started = time.monotonic()

    restarts: list[str] = []
    with store.client() as client:
        system.start_web()
        system.start_beat()  # the journal's redrive
        system.start_worker("worker-1")
        system.wait_worker_ready("worker-1")
        before = client.info("memory")["used_memory"]

        jobs = new_jobs(JOBS, "soak")
        register_jobs(store, jobs)
        plans = {job_id: plan_job(rng, job_id, ext, EVENTS_PER_JOB - 2) for job_id, ext in jobs}
        deliveries = [d for plan in plans.values() for d in plan.deliveries]
        sends = schedule(rng, plans.values(), len(deliveries) * (1 + DUPLICATE_SHARE) / RATE)

        middle = len(sends) // 2
        halfway = threading.Event()

        def on_progress(index: int) -> None:
            if index == middle:
                halfway.set()

        def restarter() -> None:
            halfway.wait(600)
            at = time.monotonic()
            system.kill("worker-1", getattr(signal, signal_name))
            system.start_worker("worker-2")
            system.wait_worker_ready("worker-2")
            restarts.append(f"{signal_name}:{time.monotonic() - at:.1f}s")

        thread = threading.Thread(target=restarter, daemon=True)
        thread.start()
        answers = Answers()
        took = send_all(system, sends, answers, threads=8, rate=RATE, on_progress=on_progress)
        thread.join(120)
        retried = resend_unacknowledged(system, deliveries, answers)

        # after a SIGKILL, kombu restores what the dead worker held once the
        # visibility timeout (10 s) has passed, on its next restore sweep (every
        # unacked_restore_interval x unacked_restore_throttle = 100 s by default)
        drained = wait_queue_empty(client, timeout=150)
        # and what a SIGKILL took off the queue unrecorded comes back by redrive:
        # the journal holds a record until its delivery is finished
        journal_empty = wait_journal_empty(client, timeout=REDRIVE_AFTER + 60)
        ledger = Ledger(store)
        states = ledger.states(list(plans))
        events = ledger.events(list(plans))
        counts, outcomes, lost, duplicated = tally(deliveries, events)
        whereabouts = _whereabouts(client, system, lost, deliveries)
        after = client.info("memory")["used_memory"]
        census = key_census(client)
        samples = {
            family: client.memory_usage(name)
            for name in (
                keys.job_state(jobs[0][0]),
                keys.job_mapping(jobs[0][0]),
                keys.job_events(jobs[0][0]),
                keys.applied_deliveries(jobs[0][0]),
                # the receiver's memory of ids: a few bucket sets, not a key per id
                *client.keys(keys.seen_buckets("replicate"))[:1],
                keys.external_index("replicate", jobs[0][1]),
            )
            if (family := family_of(name))
        }

    wrong = [
        (job_id, plan.terminal, {k: states[job_id].get(k) for k in plan.expected})
        for job_id, plan in plans.items()
        if {k: states[job_id].get(k) for k in plan.expected} != plan.expected
    ]
    bound = (
        JOBS * (TRACKED_JOB_BYTES + STATE_BYTES + EVENTS_KEEP * EVENT_BYTES)
        + len(deliveries) * DELIVERY_ID_BYTES
        + FIXED_BYTES
    )
    grown = after - before
    no_ttl = {f: c["no_ttl"] for f, c in census.items() if c["no_ttl"]}
    unexpected = {f: n for f, n in no_ttl.items() if f not in NO_TTL_PER_JOB | NO_TTL_FIXED}
    not_expiring = {f: census[f]["no_ttl"] for f in MUST_EXPIRE if census.get(f, {}).get("no_ttl")}
    missing_families = [f for f in MUST_EXPIRE if f not in census]
    still_written = {f: census[f]["keys"] for f in NO_LONGER_WRITTEN if f in census}

    mib = 1024 * 1024
    report(
        f"soak ({signal_name})",
        counts,
        seed=seed,
        sends=len(sends),
        rate=f"{len(sends) / took:.0f}/s",
        send_seconds=f"{took:.1f}",
        restarts=restarts,
        resent_after_no_2xx=retried,
        **answers.line(),
        jobs_in_expected_state=f"{JOBS - len(wrong)}/{JOBS}",
        outcomes=dict(sorted(outcomes.items())),
        used_memory_before=f"{before / mib:.2f}MiB",
        used_memory_after=f"{after / mib:.2f}MiB",
        grown=f"{grown / mib:.2f}MiB",
        bound=f"{bound / mib:.2f}MiB",
        wall=f"{time.monotonic() - started:.1f}s",
    )
    print("key families (keys, with TTL, without):")
    for family, c in sorted(census.items()):
        print(f"  {family}: {c['keys']} {c['ttl']} {c['no_ttl']}")
    print("MEMORY USAGE of one key each:", samples)
    for delivery_id, where in whereabouts.items():
        print(f"lost {delivery_id}: {where}")

    assert counts.acknowledged == counts.sent, answers.by_status
    assert counts.lost == 0, lost[:10]
    assert counts.duplicated == 0, duplicated[:10]
    assert not wrong, wrong[:5]
    assert drained, "the broker queue did not drain"
    assert journal_empty, "acknowledged deliveries still unfinished in the journal"
    assert len(restarts) == 1, restarts
    assert grown <= bound, (grown, bound)
    assert not unexpected, unexpected
    assert not not_expiring, not_expiring
    assert not missing_families, missing_families
    assert not still_written, still_written
    # per job, not per delivery: the keys without a TTL are bounded by the jobs
    assert all(no_ttl.get(f, 0) <= JOBS for f in NO_TTL_PER_JOB), no_ttl


def wait_journal_empty(client, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while client.zcard(keys.JOURNAL):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _whereabouts(client, system: System, lost: list[str], deliveries) -> dict[str, dict]:
    """For each acknowledged delivery the state script never saw (`tally`'s lost ids):
    is it on the broker queue, in kombu's unacknowledged hash, parked, and what the
    logs say."""
    lost_ids = set(lost)
    missing = [d for d in deliveries if d.delivery_id in lost_ids]
    if not missing:
        return {}
    queued = "\n".join(client.lrange("webhook_ingest", 0, -1))
    unacked = "\n".join(client.hvals("unacked"))
    parked = "\n".join(
        json.dumps(client.hgetall(keys.dead_letter(letter_id)))
        for letter_id in client.zrange(keys.DEAD_LETTERS, 0, -1)
    )
    logs = {name: system.log(name) for name in system.running}
    return {
        d.delivery_id: {
            "job": d.job_id,
            "answers": d.answers,
            "queued": d.delivery_id in queued,
            "unacked": d.delivery_id in unacked,
            "parked": d.delivery_id in parked,
            "claimed": bool(seen_buckets(client, "replicate", d.delivery_id, d.job_id)),
            "log_lines": [
                f"{name}: {line[:300]}"
                for name, log in logs.items()
                for line in log.splitlines()
                if d.delivery_id in line
            ],
        }
        for d in missing
    }

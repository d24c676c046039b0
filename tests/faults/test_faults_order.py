"""Duplicates and order: 200 jobs whose deliveries arrive shuffled and repeated.

Each job is a Replicate prediction's life: `starting`, two to four `processing`
events with rising tqdm progress in their (cumulative) logs, and a terminal
`succeeded`, `failed` or `canceled`. Every job's deliveries are sent in a random
permutation, about a third of them resent once or twice with the same
`webhook-id` (a provider's retry), all jobs interleaved, from eight threads at
once through the real gunicorn and a worker with two processes, so the same
job's deliveries race each other in the receiver and in the pool.

What must hold whatever the order (contract §4):

- each job ends in the state its terminal event implies: `completed` with
  progress 100 and the output as `result`, or `failed` with the error (for a
  cancellation, "canceled") and no result;
- in each job's broadcasts progress never goes down, and nothing is broadcast
  after the terminal one (so no broadcast after it changes the status);
- a delivery id is applied at most once (`job_events` outcomes), and a job has
  exactly as many broadcasts, on `job_updates` and on `job_progress:{job_id}`,
  as deliveries applied to it: no delivery was broadcast twice;
- every acknowledged delivery reached the state script (it has an outcome in
  `job_events`): none lost.

The receiver answers a resend of an enqueued delivery 200 `{"duplicate": true}`
and one still being enqueued 409 (retried here after its Retry-After, as a
provider would); both are counted. The random generator is seeded (printed;
`FAULTS_SEED` reruns a sequence).
"""

from __future__ import annotations

import os
import random
import time

import pytest

from tests.faults.fault_harness import (
    Ledger,
    new_jobs,
    register_jobs,
    report,
    tally,
)
from tests.faults.fault_sequences import (
    Answers,
    Broadcasts,
    plan_job,
    resend_unacknowledged,
    send_all,
    wait_queue_empty,
    with_duplicates,
)

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

JOBS = 200
DUPLICATE_SHARE = 0.35


@pytest.fixture
def broadcasts(store):
    """Every broadcast of the run, read from before the first delivery is sent."""
    reader = Broadcasts(store).start()
    yield reader
    reader.stop()


def test_shuffled_and_repeated_deliveries_end_in_the_terminal_state_broadcast_once(
    store, system, broadcasts
):
    seed = int(os.environ.get("FAULTS_SEED") or random.randrange(2**32))
    print(f"\norder test seed: {seed} (FAULTS_SEED={seed} reruns this sequence)")
    rng = random.Random(seed)
    started = time.monotonic()

    system.start_web()
    system.start_worker(concurrency=2)
    system.wait_worker_ready()
    jobs = new_jobs(JOBS, "order")
    register_jobs(store, jobs)
    plans = {job_id: plan_job(rng, job_id, ext, rng.randint(2, 4)) for job_id, ext in jobs}
    deliveries = [d for plan in plans.values() for d in plan.deliveries]
    # one shuffle of everything: each job's own sends in a random permutation,
    # interleaved with every other job's
    sends = with_duplicates(rng, deliveries, DUPLICATE_SHARE)

    answers = Answers()
    took = send_all(system, sends, answers, threads=8)
    retried = resend_unacknowledged(system, deliveries, answers)

    with store.client() as client:
        assert wait_queue_empty(client), "the worker did not drain the queue"
    broadcasts.settle()
    broadcasts.stop()  # the figures below are final (stopping again at teardown is harmless)
    ledger = Ledger(store)
    states = ledger.states(list(plans))
    events = ledger.events(list(plans))

    # -- what each delivery became ------------------------------------------------
    counts, outcomes, lost, duplicated = tally(deliveries, events)

    # -- the broadcasts -----------------------------------------------------------
    wrong_final, regressions, after_terminal, over_broadcast, channel_mismatch = [], [], [], [], []
    for job_id, plan in plans.items():
        state, expected = states[job_id], plan.expected
        got = {name: state.get(name) for name in expected}
        if got != expected:
            wrong_final.append((job_id, plan.terminal, got, expected))
        sequence = broadcasts.updates.get(job_id, [])
        progress = [m["progress"] for m in sequence]
        if progress != sorted(progress):
            regressions.append((job_id, progress))
        terminal_at = next(
            (i for i, m in enumerate(sequence) if m["status"] in ("completed", "failed")), None
        )
        if terminal_at is None or terminal_at != len(sequence) - 1:
            after_terminal.append((job_id, [m["status"] for m in sequence]))
        elif sequence[-1]["status"] != expected["status"]:
            wrong_final.append((job_id, "broadcast", sequence[-1]["status"], expected["status"]))
        applied_here = sum(1 for e in events[job_id] if e["outcome"] == "applied")
        if len(sequence) != applied_here:
            over_broadcast.append((job_id, len(sequence), applied_here))
        if broadcasts.progress.get(job_id, []) != sequence:
            channel_mismatch.append(job_id)

    answered = answers.line()
    report(
        "duplicates and order",
        counts,
        seed=seed,
        sends=len(sends),
        resent_after_no_2xx=retried,
        **answered,
        broadcasts=sum(len(s) for s in broadcasts.updates.values()),
        outcomes=dict(sorted(outcomes.items())),
        send_seconds=f"{took:.1f}",
        wall=f"{time.monotonic() - started:.1f}s",
    )
    assert counts.acknowledged == counts.sent, answers.by_status
    assert counts.lost == 0, lost[:10]
    assert counts.duplicated == 0, duplicated[:10]
    assert not wrong_final, wrong_final[:5]
    assert not regressions, regressions[:5]
    assert not after_terminal, after_terminal[:5]
    assert not over_broadcast, over_broadcast[:5]
    assert not channel_mismatch, channel_mismatch[:5]
    # each delivery accepted once; every other send recognised as a resend
    assert answered["accepted_202"] == len(deliveries), answers.by_status
    assert answered["duplicate_200"] + answered["in_flight_409"] == (
        len(sends) + retried - len(deliveries)
    ), answers.by_status

"""Scale-out: two receivers, two workers and two beats on one Redis, on each broker.

Issue 18, item 4: "two receivers and two workers (separate process groups, as
on separate hosts) and two beats against one Redis and against RabbitMQ, under
a steady stream: every delivery applied once, one active beat, the load
shared."

The processes, each in a process group of its own and with the same
environment, as two hosts would run them: two gunicorns on two ports (two
processes each), two `workers.run worker` (concurrency 2, distinct hostnames),
two `celery beat` (RedBeat). One FaultRedis is the state store (and the broker
on "redis"); on "amqp" the broker is a RabbitMQ virtual host of the test's own.

The stream: RATE signed Replicate deliveries per second for SECONDS, one
terminal delivery per registered job, alternating between the two receivers
(what a round-robin balancer does). A share of them (CROSS_RESENDS) is sent a
second time, to the *other* receiver, within about a second of the first (either
copy may come first): a provider's retry that the balancer sends to another
host. Whatever got no 2xx is resent at the end, as providers do.

Asserted, and why each bound holds:

- **Applied once.** Every delivery acknowledged; every acknowledged delivery's
  job completed (lost = 0); no delivery id applied twice (duplicated = 0), from
  the state the workers wrote (`Ledger`); the journal empty at the end.
- **One claim across receivers.** Each delivery id is "delivery accepted" in
  exactly one receiver's log, never in both: the claim lives in the shared
  Redis, so the copy sent to the other receiver is answered as a duplicate (or
  409 while the first is still being received), never accepted again.
- **Receivers share the load.** Each receiver accepted at least FAIR_SHARE of
  the deliveries. The split is the test's own (alternate by index), so ~50 %
  each is expected; the check is that both gunicorns really served (a second
  "receiver" that was the first one again, or one that refused, fails it).
- **Workers share the load.** Each worker's log has "delivery applied" (with
  the delivery id, JSON logs) for at least FAIR_SHARE of the applied
  deliveries, and the two sets are disjoint and together every applied id.
  Why ~50 % is expected: `worker_prefetch_multiplier` = 1 with concurrency 2,
  so a worker holds at most two messages and cannot hoard the queue; at a rate
  both keep up with, each waits on the queue most of the time. Redis hands a
  pushed message to the longest-waiting of the blocked BRPOP clients (one per
  worker), RabbitMQ round-robins between consumers with free prefetch: either
  way they alternate. 25 % leaves room for a worker that started late or was
  descheduled on the shared two cores, and still fails a worker that consumed
  nothing (wrong queue, stuck).
- **One active beat.** Exactly one beat log has "beat: Acquired lock"; only
  that beat logged "Sending due task"; and the journal's redrive
  (JOURNAL_REDRIVE_INTERVAL_SECONDS = 2 here) was sent once per interval over
  the window: at most window / 2 + 2 sends (two beats sending would be about
  twice that), at least 60 % of window / 2 (the holder kept its schedule on a
  busy box; RedBeat counts the next run from the last one, so a late tick delays
  the rest and never adds one).

The counts line (docs/operations.md, "Scaling out") adds the per receiver and
per worker shares and the beat figures.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

import pytest

from tests.faults.fault_harness import (
    BROKERS,
    JOURNAL_ENV,
    Delivery,
    Ledger,
    Stream,
    System,
    count,
    new_jobs,
    one_delivery_each,
    register_jobs,
    report,
    resend_unacknowledged,
)
from tests.support import free_port, wait_for
from webhook_ingest.state import keys

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.faults,
    # JSON logs: the receivers' and workers' lines carry each delivery's id, so
    # the test can tell which process accepted and which applied it
    pytest.mark.system_env(LOG_FORMAT="json", **JOURNAL_ENV),
]

RATE = float(os.environ.get("SCALE_OUT_RATE", "60"))  # deliveries per second, both receivers
SECONDS = 25
CROSS_RESENDS = 0.05  # share of deliveries sent again to the other receiver
FAIR_SHARE = 0.25
REDRIVE_INTERVAL = int(JOURNAL_ENV["JOURNAL_REDRIVE_INTERVAL_SECONDS"])
ACQUIRED = "beat: Acquired lock"  # as in test_faults_beat.py
SENDING = "Sending due task"
REDRIVE_SENT = "Sending due task redrive-journal"

RECEIVERS = ("web-a", "web-b")
WORKERS = ("worker-a", "worker-b")
BEATS = ("beat-a", "beat-b")


@dataclass
class Receiver:
    """One of the two receivers: what Stream and resend_unacknowledged need (`url`)."""

    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def records(text: str) -> list[dict]:
    """The JSON log lines of a process's log (Celery's banner and the like skipped)."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def delivery_ids(system: System, name: str, message: str) -> Counter:
    """Delivery id -> how many lines of `name`'s log say `message` for it."""
    return Counter(
        r["delivery_id"]
        for r in records(system.log(name))
        if r.get("message") == message and r.get("delivery_id")
    )


def sends_between(system: System, name: str, what: str, start: float, end: float) -> int:
    """Beat's "Sending due task ..." lines in [start, end] (epoch seconds)."""
    return sum(
        1
        for r in records(system.log(name))
        if what in r.get("message", "")
        and start <= datetime.fromisoformat(r["ts"]).timestamp() <= end
    )


def split(rng: random.Random, deliveries: list[Delivery]) -> tuple[list[list[Delivery]], int]:
    """Alternate by index between the two receivers; CROSS_RESENDS of them go again to
    the other receiver, 2-10 places after the original's place in its own stream
    (0.07-0.3 s at RATE/2 each; the other copies inserted before it shift both
    streams by up to about a second, so either copy may be sent first)."""
    lists: list[list[Delivery]] = [[], []]
    for index, delivery in enumerate(deliveries):
        lists[index % 2].append(delivery)
    chosen = rng.sample(range(len(deliveries)), int(len(deliveries) * CROSS_RESENDS))
    for index in sorted(chosen, reverse=True):  # from the end: earlier places stay put
        other = lists[1 - index % 2]
        other.insert(min(len(other), index // 2 + rng.randint(2, 10)), deliveries[index])
    return lists, len(chosen)


def wait_journal_empty(store, timeout: float) -> bool:
    client = store.client()
    try:
        deadline = time.monotonic() + timeout
        while client.zcard(keys.JOURNAL):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True
    finally:
        client.close()


@pytest.mark.parametrize("broker", BROKERS)
def test_two_receivers_two_workers_two_beats_apply_once_share_load_one_beat(store, system, broker):
    seed = int(os.environ.get("FAULTS_SEED") or random.randrange(2**32))
    print(f"\nscale-out seed: {seed} (FAULTS_SEED={seed} reruns this split)")
    rng = random.Random(seed)
    started = time.monotonic()

    # -- two of everything -------------------------------------------------------
    for name in WORKERS:
        system.start_worker(name, concurrency=2)
    for name in WORKERS:
        system.wait_worker_ready(name)
    for name in BEATS:
        system.start_beat(name)
    wait_for(
        lambda: any(ACQUIRED in system.log(name) for name in BEATS),
        timeout=30,
        message="one beat to acquire the RedBeat lock",
    )
    receivers = [Receiver(RECEIVERS[0], system.port), Receiver(RECEIVERS[1], free_port())]
    for receiver in receivers:
        system.start_web(receiver.name, port=receiver.port)

    jobs = new_jobs(int(RATE * SECONDS), "scale")
    register_jobs(store, jobs)
    deliveries = one_delivery_each(jobs)
    lists, cross = split(rng, deliveries)

    # -- the stream, half to each receiver ----------------------------------------
    window_start = time.time()
    streams = [
        Stream(receiver, sends, rate=RATE / 2).start()  # type: ignore[arg-type]
        for receiver, sends in zip(receivers, lists, strict=True)
    ]
    for stream in streams:
        stream.join(timeout=SECONDS * 4)
    send_seconds = time.time() - window_start
    for receiver, sends in zip(receivers, lists, strict=True):
        resend_unacknowledged(receiver, sends)  # type: ignore[arg-type]

    ledger = Ledger(store)
    counts = count(ledger, deliveries, timeout=120)
    journal_empty = wait_journal_empty(store, timeout=60)
    window_end = time.time()

    # -- who did what ----------------------------------------------------------------
    accepted = {r.name: delivery_ids(system, r.name, "delivery accepted") for r in receivers}
    duplicates = {r.name: delivery_ids(system, r.name, "delivery duplicate") for r in receivers}
    applied_by = {name: delivery_ids(system, name, "delivery applied") for name in WORKERS}
    applications = ledger.applications([d.job_id for d in deliveries])
    answers = Counter(status for d in deliveries for status in d.answers)

    beat_logs = {name: system.log(name) for name in BEATS}
    holders = [name for name, log in beat_logs.items() if ACQUIRED in log]
    senders = [name for name, log in beat_logs.items() if SENDING in log]
    redrive_sends = {
        name: sends_between(system, name, REDRIVE_SENT, window_start, window_end) for name in BEATS
    }
    expected_sends = (window_end - window_start) / REDRIVE_INTERVAL

    all_accepted = Counter()
    for ids in accepted.values():
        all_accepted.update(ids)
    all_applied_by_logs = Counter()
    for ids in applied_by.values():
        all_applied_by_logs.update(ids)
    total_accepted = sum(all_accepted.values())
    total_applied = sum(all_applied_by_logs.values())

    report(
        f"scale out ({broker})",
        counts,
        seed=seed,
        rate=f"{sum(len(s) for s in lists) / send_seconds:.0f}/s",
        send_seconds=f"{send_seconds:.1f}",
        cross_resends=cross,
        answers=dict(sorted(answers.items())),
        accepted_per_receiver=[len(accepted[r.name]) for r in receivers],
        duplicate_answers_per_receiver=[sum(duplicates[r.name].values()) for r in receivers],
        applied_per_worker=[len(applied_by[name]) for name in WORKERS],
        active_beats=len(holders),
        beats_sending=senders,
        redrive_sends=[redrive_sends[name] for name in BEATS],
        expected_sends=f"{expected_sends:.1f}",
        window_s=f"{window_end - window_start:.1f}",
        wall=f"{time.monotonic() - started:.1f}s",
    )

    # applied once
    assert counts.acknowledged == counts.sent, answers
    assert counts.lost == 0, counts
    assert counts.duplicated == 0, [i for i, n in applications.items() if n > 1][:10]
    assert journal_empty, "acknowledged deliveries still unfinished in the journal"
    # one claim across the receivers: accepted once, by one of them
    twice = [i for i, n in all_accepted.items() if n > 1]
    assert not twice, twice[:10]
    assert set(all_accepted) == {d.delivery_id for d in deliveries}, "accepted ids != sent ids"
    # the receivers shared the load
    for receiver in receivers:
        share = len(accepted[receiver.name]) / total_accepted
        assert share >= FAIR_SHARE, (receiver.name, share, accepted)
    # the workers shared the load, each delivery applied by one of them
    twice = [i for i, n in all_applied_by_logs.items() if n > 1]
    assert not twice, twice[:10]
    assert set(all_applied_by_logs) == set(applications), "workers' logs != applied ids"
    for name in WORKERS:
        share = len(applied_by[name]) / total_applied
        assert share >= FAIR_SHARE, (name, share, {n: len(ids) for n, ids in applied_by.items()})
    # one active beat
    assert len(holders) == 1, {n: log[-2000:] for n, log in beat_logs.items()}
    assert senders == holders, f"beats that sent: {senders}, lock holder: {holders}"
    sends = sum(redrive_sends.values())
    assert sends <= expected_sends + 2, (redrive_sends, expected_sends)
    assert sends >= 0.6 * expected_sends, (redrive_sends, expected_sends)

"""Receiver faults with the real processes: gunicorn's worker processes SIGKILLed
under a steady stream of signed deliveries, on each broker.

A request in flight in a killed worker gets no answer (a reset: status 0 in the
harness), whatever point it had reached. A provider retries every delivery it
got no 2xx for; the delivery claim makes the retry of one that was in fact
enqueued a 2xx "duplicate", applied once. The master replaces its dead workers.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest
import requests

from tests.faults.fault_harness import (
    BROKERS,
    JOURNAL_ENV,
    REDRIVE_AFTER,
    Ledger,
    Stream,
    System,
    count,
    new_jobs,
    one_delivery_each,
    register_jobs,
    report,
    send,
)
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

KILLS = 3
MAX_ROUNDS = 7
# The providers' retries end within seconds: a retry of a delivery whose first
# attempt died between its claim and its publish (RabbitMQ's path) is a duplicate
# at once, its journal record redriven by beat (it was 409 for up to 30 s, while a
# `pending` claim expired, before the journal).
RETRIES_BOUND = 15


def retry_like_a_provider(system: System, deliveries, timeout: float) -> float:
    """Resend every delivery without a 2xx, a second apart (the 409's Retry-After),
    until all are acknowledged or `timeout` passes; returns the seconds it took."""
    started = time.monotonic()
    session = requests.Session()
    while time.monotonic() - started < timeout:
        pending = [d for d in deliveries if not d.acknowledged]
        if not pending:
            break
        for delivery in pending:
            send(session, system.url, delivery)
        time.sleep(1)
    session.close()
    return time.monotonic() - started


def kill_web_workers(system: System) -> list[int]:
    """SIGKILL every gunicorn worker (the master's children); wait for the master
    to have replaced them all."""
    victims = system.children("web")
    assert len(victims) == 2, victims  # WEB_CONCURRENCY=2 in the harness
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: len(fresh := system.children("web")) == 2 and not set(fresh) & set(victims),
        timeout=30,
        interval=0.05,
        message="gunicorn's master to replace its killed workers",
    )
    return victims


@pytest.mark.system_env(**JOURNAL_ENV)
@pytest.mark.parametrize("broker", BROKERS)
def test_receiver_workers_killed_under_a_stream_lose_nothing(store, system, broker):
    """Kill both gunicorn workers KILLS times (or more, until a request in flight
    was cut off; at most MAX_ROUNDS) during a 300-delivery stream.

    - Every delivery answered 2xx during the stream was enqueued: it is applied
      (counted before any retry).
    - Every other one (no answer, or 503/409 while a worker was being replaced)
      is retried as a provider would until it gets a 2xx; then every delivery is
      applied, none twice (a retry of an enqueued one is a "duplicate").
    - The master is the same process, still serving (/readyz 200), with its
      two workers.

    Bound on the retries: none is refused any more. A delivery whose first attempt
    died between its claim and its publish (RabbitMQ's path) is journaled with its
    claim: its retry is a duplicate at once, and beat's redrive publishes it once
    it is overdue. On Redis the claim, the journal and the push are one script.
    """
    ledger = Ledger(store)
    system.start_web()
    system.start_beat()  # the journal's redrive
    system.start_worker()
    system.wait_worker_ready()
    master = system.running["web"].pid
    jobs = new_jobs(300, "rkill")
    register_jobs(store, jobs)
    deliveries = one_delivery_each(jobs)
    stream = Stream(system, deliveries, rate=50).start()
    killed = []
    # At least KILLS rounds, more (up to MAX_ROUNDS) until a kill has cut off a
    # request in flight: a sync worker is idle between requests part of the time.
    for round_ in range(1, MAX_ROUNDS + 1):
        wait_for(
            lambda n=round_: stream.answered >= n * len(deliveries) // (MAX_ROUNDS + 2),
            timeout=60,
            message="the stream to advance",
        )
        killed += kill_web_workers(system)
        if round_ >= KILLS and any(0 in d.answers for d in deliveries):
            break
    stream.join()
    first = Counter(d.status for d in deliveries)
    first_counts = count(ledger, deliveries, timeout=60)

    retried_s = retry_like_a_provider(system, deliveries, timeout=RETRIES_BOUND + 30)
    counts = count(ledger, deliveries, timeout=REDRIVE_AFTER + 60)
    answers = Counter(a for d in deliveries for a in d.answers)
    ready = system.readyz()[0]
    workers = system.children("web")
    master_alive = system.running["web"].poll() is None
    same_master = system.running["web"].pid == master

    report(f"receiver workers SIGKILL, before retries ({broker})", first_counts)
    report(
        f"receiver workers SIGKILL, after retries ({broker})",
        counts,
        killed=len(killed),
        first_pass=dict(sorted(first.items())),
        answers=dict(sorted(answers.items())),
        retried_s=f"{retried_s:.1f}",
    )
    # what got a 2xx during the faults was enqueued: applied, once
    assert first_counts.lost == 0 and first_counts.duplicated == 0
    assert first[0] > 0, "no request was cut off: the kills hit nothing in flight"
    # after the providers' retries, everything
    assert counts.acknowledged == counts.sent
    assert counts.applied == counts.sent
    assert counts.lost == 0 and counts.duplicated == 0
    assert retried_s < RETRIES_BOUND, f"retries took {retried_s:.1f}s"
    assert answers[409] == 0, answers
    # the receiver healed by itself
    assert master_alive and same_master
    assert ready == 200
    assert len(workers) == 2 and not set(workers) & set(killed)

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
import socket
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


class HalfSent:
    """A delivery whose request a worker is reading when the kill comes: headers
    and half the body sent, the rest never. A gevent worker is idle between its
    millisecond-long requests most of the time, so a steady stream alone rarely
    has one in flight at the instant of a kill; this one always is."""

    def __init__(self, system: System, delivery) -> None:
        self.delivery = delivery
        path, body, headers = delivery.request()
        data = body.encode() if isinstance(body, str) else body
        head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{system.port}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head += [f"Content-Length: {len(data)}", "Connection: close", "", ""]
        self.sock = socket.create_connection(("127.0.0.1", system.port), timeout=10)
        self.sock.sendall("\r\n".join(head).encode() + data[: len(data) // 2])

    def outcome(self) -> int:
        """What the sender saw: 0 when the connection died without an answer."""
        try:
            answer = self.sock.recv(64)
        except OSError:
            answer = b""
        finally:
            self.sock.close()
        status = int(answer.split()[1]) if answer.startswith(b"HTTP/") else 0
        self.delivery.answers.append(status)
        self.delivery.status = status
        return status


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
    """Kill both gunicorn workers KILLS times during a 300-delivery stream, each
    time while two more deliveries are half sent (their requests being read).

    - The half-sent requests get no answer: the kill cut them off in flight.
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
    cut_jobs = new_jobs(2 * KILLS, "rcut")
    register_jobs(store, jobs + cut_jobs)
    streamed = one_delivery_each(jobs)
    cut = one_delivery_each(cut_jobs)
    deliveries = streamed + cut
    stream = Stream(system, streamed, rate=50).start()
    killed = []
    cut_outcomes = []
    for round_ in range(1, KILLS + 1):
        wait_for(
            lambda n=round_: stream.answered >= n * len(streamed) // (KILLS + 1),
            timeout=60,
            message="the stream to advance",
        )
        half_sent = [HalfSent(system, d) for d in cut[2 * (round_ - 1) : 2 * round_]]
        time.sleep(0.3)  # accepted and being read by a worker
        killed += kill_web_workers(system)
        cut_outcomes += [h.outcome() for h in half_sent]
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
        cut_in_flight=cut_outcomes.count(0),
        retried_s=f"{retried_s:.1f}",
    )
    # what got a 2xx during the faults was enqueued: applied, once
    assert first_counts.lost == 0 and first_counts.duplicated == 0
    assert cut_outcomes == [0] * len(cut), f"half-sent requests answered {cut_outcomes}"
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

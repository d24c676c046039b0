"""The delivery journal under the faults that lose a broker's message: nothing the
receiver acknowledged is lost, whatever the broker did with it (README
"Reliability", docs/operations.md).

Each test runs the real processes (gunicorn, the Celery worker, beat with the
journal's redrive) on a FaultRedis of its own, on the Redis broker and on
RabbitMQ, and states sent / acknowledged / applied / lost / duplicated:

- the whole worker SIGKILLed eight times while it drains a backlog (kombu's
  BRPOP window on Redis: a popped message the dead worker never recorded);
- parking a dead letter while the state Redis refuses writes (maxmemory with
  noeviction), then accepting them again;
- a task past its hard time limit (requeued, not acknowledged);
- the broker's queue emptied behind the service's back (DEL, purge_queue);
- a receiver SIGKILLed between the claim and the publish (RabbitMQ): the
  provider's retry is a duplicate at once, the delivery applied once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import uuid

import pytest
import requests

from tests.conftest import OPENAI_SECRET
from tests.faults.fault_harness import (
    BROKERS,
    JOURNAL_ENV,
    RABBITMQ,
    REDRIVE_AFTER,
    Counts,
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
from tests.support import FakeProviderAPI, body_of, free_port, signed_headers, wait_for
from webhook_ingest.state import keys

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

REDRIVE_INTERVAL = 2  # fault_harness.JOURNAL_ENV
# What a loaded, shared 2-core machine may add: worker and beat start, RedBeat's
# 5-s loop, a backlog to drain.
SLACK = 40


def journal_depth(system: System) -> int:
    client = system.store.client()
    try:
        return client.zcard(keys.JOURNAL)
    finally:
        client.close()


def redriven(system: System) -> int:
    return system.log("worker").count("delivery redriven from the journal")


# -- the whole worker killed while it drains a backlog ---------------------------------


@pytest.mark.system_env(**JOURNAL_ENV)
@pytest.mark.parametrize("broker", BROKERS)
def test_worker_sigkilled_eight_times_while_draining_a_backlog_loses_nothing(system, broker):
    kills, burst = 8, 150
    jobs = new_jobs(kills * burst, f"journal-kill-{broker}")
    register_jobs(system.store, jobs)
    deliveries = one_delivery_each(jobs)
    system.start_web()
    system.start_beat()

    for round_ in range(kills):
        batch = deliveries[round_ * burst : (round_ + 1) * burst]
        Stream(system, batch, rate=400, threads=8).start().join(timeout=120)
        system.start_worker("worker", concurrency=2)
        # killed while draining: some applied, most still queued or reserved
        wait_for(
            lambda batch=batch: (
                len(Ledger(system.store).applications([d.job_id for d in batch])) > 5
            ),
            timeout=60,
            interval=0.02,
            message="the worker to start draining",
        )
        system.kill("worker")

    system.start_worker("worker", concurrency=2)
    counts = count(
        Ledger(system.store), deliveries, timeout=REDRIVE_AFTER + REDRIVE_INTERVAL + 3 * SLACK
    )

    report(
        f"journal: worker SIGKILL x{kills} draining a backlog ({broker})",
        counts,
        redriven=redriven(system),
    )
    assert counts.acknowledged == len(deliveries)
    assert counts.lost == 0
    assert counts.duplicated == 0
    wait_for(lambda: journal_depth(system) == 0, timeout=30, message="the journal to empty")


# -- parking while Redis refuses writes -------------------------------------------------


@pytest.mark.system_env(**JOURNAL_ENV)
@pytest.mark.parametrize("broker", BROKERS)
def test_parking_while_redis_refuses_writes_loses_nothing(system, broker):
    """Deliveries that must be parked (they name another prediction than their
    job's) reach the worker while the state Redis refuses writes: parking fails.
    Celery acknowledged a task that raised; now the delivery is retried and its
    journal record stays, so each is parked once Redis takes writes again."""
    jobs = new_jobs(20, f"journal-oom-{broker}")
    register_jobs(system.store, jobs)
    deliveries = one_delivery_each(jobs)
    for delivery in deliveries:  # JobMismatch: parked, never applied
        delivery.payload["id"] = f"{delivery.external_id}-other"
    system.start_web()
    system.start_worker("worker", concurrency=2)
    system.wait_worker_ready("worker")
    worker = system.running["worker"].pid
    os.killpg(worker, signal.SIGSTOP)  # holds the deliveries back until Redis refuses
    Stream(system, deliveries, rate=100).start().join(timeout=60)
    assert all(d.acknowledged for d in deliveries)

    admin = system.store.client()
    # far below what it uses (noeviction): every write is refused, even after a
    # read frees a little
    admin.config_set("maxmemory", 1)
    try:
        os.killpg(worker, signal.SIGCONT)
        time.sleep(10)  # the worker takes the deliveries; every park is refused
        assert admin.zcard(keys.DEAD_LETTERS) == 0
        refused = system.log("worker").count("OutOfMemoryError") + system.log("worker").count("OOM")
        assert refused, "the worker never met the refused writes: nothing was tested"
    finally:
        admin.config_set("maxmemory", 0)
    system.start_beat()

    def parked() -> int:
        return admin.zcard(keys.DEAD_LETTERS)

    wait_for(
        lambda: parked() >= len(deliveries),
        timeout=REDRIVE_AFTER + REDRIVE_INTERVAL + 3 * SLACK,
        message="every delivery to be parked",
    )
    letters = [
        admin.hget(keys.dead_letter(i), "delivery_id")
        for i in admin.zrange(keys.DEAD_LETTERS, 0, -1)
    ]
    lost = {d.delivery_id for d in deliveries} - set(letters)
    duplicated = len(letters) - len(set(letters))
    report(
        f"journal: parking while Redis refuses writes ({broker})",
        Counts(len(deliveries), len(deliveries), len(set(letters)), len(lost), duplicated),
        parked=len(letters),
        redriven=redriven(system),
    )
    admin.close()
    assert lost == set()
    if broker == "amqp":
        # RabbitMQ kept every message: the worker's own retries parked them all,
        # the redrive was not needed (on Redis, kombu loses what it popped while
        # it could not record it, and the redrive brings that back)
        assert redriven(system) == 0
    wait_for(lambda: journal_depth(system) == 0, timeout=30, message="the journal to empty")


# -- a task past its hard time limit -----------------------------------------------------


@pytest.fixture
def openai_api():
    api = FakeProviderAPI().start()
    yield api
    api.stop()


@pytest.mark.system_env(JOURNAL_REDRIVE_AFTER_SECONDS="600")  # no redrive within the test
def test_a_task_past_its_hard_time_limit_is_requeued_and_applied(system, openai_api):
    """The hard time limit (half the 10-s visibility timeout here) kills the pool
    child in the middle of a provider call that hangs; Celery acknowledged such a
    task by default. Requeued, the next attempt gets the answer and applies it,
    long before a redrive could have."""
    job_id, response_id = f"job-limit-{uuid.uuid4().hex[:8]}", f"resp_{uuid.uuid4().hex[:12]}"
    path = f"/v1/responses/{response_id}"
    openai_api.respond("GET", path, (200, {"id": response_id, "status": "completed", "output": []}))
    openai_api.hold("GET", path, seconds=30)  # the first fetch outlives the hard limit
    system.env.update(OPENAI_BASE_URL=f"{openai_api.url}/v1", OPENAI_API_KEY="sk-test")
    client = system.store.client()
    from webhook_ingest.state.job_registry import JobRegistry

    JobRegistry(client).register(job_id, "openai", response_id)
    system.start_web()
    system.start_worker("worker", concurrency=1)
    system.wait_worker_ready("worker")

    body = body_of(
        {
            "object": "event",
            "id": f"evt_{uuid.uuid4().hex}",
            "type": "response.completed",
            "created_at": int(time.time()),
            "data": {"id": response_id},
        }
    )
    answer = requests.post(
        f"{system.url}/webhook/openai", data=body, headers=signed_headers(OPENAI_SECRET, body)
    )
    assert answer.status_code == 202

    wait_for(
        lambda: client.hget(keys.job_state(job_id), "status") == "completed",
        timeout=90,
        message="the requeued delivery to be applied",
    )
    log = system.log("worker")
    assert "Hard time limit" in log
    assert openai_api.calls("GET", path) >= 2
    client.close()


# -- the queue emptied behind the service's back -------------------------------------------


@pytest.mark.system_env(**JOURNAL_ENV)
@pytest.mark.parametrize("broker", BROKERS)
def test_a_purged_queue_is_recovered_by_redrive(system, broker):
    jobs = new_jobs(100, f"journal-purge-{broker}")
    register_jobs(system.store, jobs)
    deliveries = one_delivery_each(jobs)
    system.start_web()
    Stream(system, deliveries, rate=200).start().join(timeout=60)

    if broker == "redis":
        client = system.store.client()
        assert client.delete(system.queue) == 1
        client.close()
    else:
        purged = subprocess.run(
            ["rabbitmqctl", "purge_queue", "-p", system.vhost, system.queue],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert purged.returncode == 0, purged.stderr
    system.start_worker("worker", concurrency=2)
    system.start_beat()

    counts = count(
        Ledger(system.store), deliveries, timeout=REDRIVE_AFTER + REDRIVE_INTERVAL + 2 * SLACK
    )
    report(
        f"journal: queue emptied behind the service ({broker})", counts, redriven=redriven(system)
    )
    assert counts.acknowledged == len(deliveries)
    assert counts.lost == 0
    assert counts.duplicated == 0
    assert redriven(system) >= len(deliveries)


# -- a receiver killed between claim and publish -----------------------------------------------


class FreezableProxy:
    """A TCP relay to RabbitMQ that can stop relaying: a publish through it hangs,
    as one does on a broker that stopped answering, until the receiver is killed."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.frozen = threading.Event()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._relay, args=(source, sink), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self.frozen.is_set():
                    time.sleep(0.05)
                sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._server.close()
        for sock in self._sockets:
            sock.close()


# One sync worker serves one request at a time: the requests behind the hung
# publish wait in the listen queue, never claimed, which is the cut this test
# makes. The default gevent worker would claim and journal them all concurrently.
@pytest.mark.system_env(WEB_CONCURRENCY="1", WEB_WORKER_CLASS="sync", **JOURNAL_ENV)
@pytest.mark.parametrize("broker", ["amqp"])
def test_receiver_killed_between_claim_and_publish_loses_nothing(system, broker):
    """One gunicorn process whose broker connection goes through a relay that stops
    relaying: the next delivery is claimed and journaled, and its publish hangs
    (the requests behind it wait in the listen queue, never claimed). SIGKILL the
    receiver then. Its retry after the restart is a duplicate at once — it was
    409 for up to 30 s before the journal — and the redrive applies it once."""
    host, port = RABBITMQ.split(":")
    proxy = FreezableProxy((host, int(port)))
    direct_url = system.broker_url
    jobs = new_jobs(4, "journal-claim-publish")
    register_jobs(system.store, jobs)
    warm_up, cut_off, *waiting = one_delivery_each(jobs)
    session = requests.Session()
    try:
        system.env["CELERY_BROKER_URL"] = direct_url.replace(
            f"@{RABBITMQ}/", f"@127.0.0.1:{proxy.port}/"
        )
        system.start_web()
        assert send(session, system.url, warm_up) == 202  # its broker connection is open

        proxy.frozen.set()  # the next publish hangs
        for delivery in (cut_off, *waiting):
            threading.Thread(
                target=send, args=(requests.Session(), system.url, delivery), daemon=True
            ).start()
            time.sleep(0.2)  # cut_off first
        # no worker yet: the warm-up's record is there too
        wait_for(lambda: journal_depth(system) == 2, timeout=30, message="cut_off journaled")
        time.sleep(1)
        assert journal_depth(system) == 2  # the others never got past the listen queue
        system.kill("web")  # between the claim and the publish
        assert cut_off.status in (None, 0), cut_off.answers
    finally:
        proxy.close()

    system.env["CELERY_BROKER_URL"] = direct_url
    system.start_web()
    started = time.monotonic()
    retries = {d.delivery_id: send(session, system.url, d) for d in (cut_off, *waiting)}
    answered_in = time.monotonic() - started
    # the one cut off is a duplicate at once; the others were never received: new
    assert retries[cut_off.delivery_id] == 200, retries
    assert all(retries[d.delivery_id] == 202 for d in waiting), retries
    system.start_worker("worker", concurrency=2)
    system.start_beat()

    deliveries = [warm_up, cut_off, *waiting]
    counts = count(Ledger(system.store), deliveries, timeout=REDRIVE_AFTER + 2 * SLACK)
    report(
        "journal: receiver SIGKILL between claim and publish (amqp)",
        counts,
        retries_answered_in=f"{answered_in:.2f}s",
        redriven=redriven(system),
    )
    assert counts.lost == 0
    assert counts.duplicated == 0
    assert counts.applied == len(deliveries)
    assert redriven(system) >= 1  # cut_off: only the journal had it

"""Real processes and real failures for the fault suite (tests/faults/test_faults_*.py).

A `FaultRedis` is a redis-server of the test's own with the production settings
(AOF, `noeviction`) that can be killed and restarted on the same port and
directory, so a restart reloads what the AOF kept. A `System` runs the service's
processes on it as the Procfile does (gunicorn, the Celery worker, beat), on the
Redis broker or on RabbitMQ. A `Stream` sends signed deliveries at a steady rate
from threads and records every answer, so a test knows exactly which deliveries
were acknowledged. `Ledger` reads back what was applied from the state the
worker wrote (`job_state`, and `job_events`, the per-job audit list in which the
state script records every observation with its delivery id and outcome), and
`report` prints the counts every fault test states: sent, acknowledged, applied,
lost, duplicated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests

from tests.conftest import ADMIN_TOKEN, REPLICATE_SECRET
from tests.support import PrivateRedis, body_of, free_port, signed_headers, wait_for
from webhook_ingest.state import keys

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# RabbitMQ on this machine (guest/guest); each System gets a virtual host of its own.
RABBITMQ = os.environ.get("TEST_RABBITMQ_HOST", "127.0.0.1:5672")
# What a test parametrizes `broker` with (tests/faults/conftest.py) to run on each.
BROKERS = ["redis", "amqp"]
# Short enough that a crash's redelivery is seen within a test; the lower bound
# the service accepts (webhook_ingest.config) and the value docs/operations.md uses.
VISIBILITY_TIMEOUT = 10

# The journal's redrive on a schedule the suite can wait for: the lowest period
# the service accepts with that visibility timeout (webhook_ingest.config), and
# beat's redrive every 2 s. Tests that lose a broker's message run beat with it.
REDRIVE_AFTER = 20
JOURNAL_ENV = {
    "JOURNAL_REDRIVE_AFTER_SECONDS": str(REDRIVE_AFTER),
    "JOURNAL_REDRIVE_INTERVAL_SECONDS": "2",
}

# Every fault test's counts, printed at the end of the run (tests/conftest.py).
COUNTS: list[str] = []


# -- Redis ----------------------------------------------------------------------


class FaultRedis(PrivateRedis):
    """redis-server with AOF and noeviction, killable and restartable in place."""

    def __init__(self, fsync: str = "everysec") -> None:
        super().__init__(
            "--appendonly",
            "yes",
            "--appendfsync",
            fsync,
            "--maxmemory-policy",
            "noeviction",
        )

    def kill(self) -> None:
        """SIGKILL: what a crash or an OOM kill does (no final fsync, no save)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self) -> FaultRedis:
        """Same port, same directory: the AOF is replayed on start."""
        self.stop()
        return self.start()

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, **kwargs)


# -- the service's processes ----------------------------------------------------


class System:
    """gunicorn, Celery workers and beats as subprocesses, each in its own process
    group, on one FaultRedis for state and `broker` ("redis" or "amqp") for tasks.

    `env` is what every process started from now on gets: a test may add to it
    before it starts them."""

    def __init__(
        self, store: FaultRedis, broker: str = "redis", extra_env: dict[str, str] | None = None
    ) -> None:
        self.store = store
        self.broker = broker
        self.port = free_port()
        self.vhost = None
        broker_url = store.url
        if broker == "amqp":
            # A virtual host of this test's own on the shared RabbitMQ: its queues
            # start empty and nothing else (another test run, a helper) reads them.
            self.vhost = f"wi-faults-{uuid.uuid4().hex[:8]}"
            rabbitmqctl("add_vhost", self.vhost)
            rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
            broker_url = f"amqp://guest:guest@{RABBITMQ}/{self.vhost}"
        self.broker_url = broker_url
        self.env = {
            **os.environ,
            "REDIS_URL": store.url,
            "CELERY_BROKER_URL": broker_url,
            "PORT": str(self.port),
            "WEB_CONCURRENCY": "2",
            "WORKER_METRICS_PORT": "0",
            "BROKER_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY_TIMEOUT),
            "LOG_FORMAT": "text",
            **(extra_env or {}),
        }
        self.queue = "webhook_ingest"  # celeryconfig.task_default_queue
        self.logs = Path(f"/tmp/wi-faults-{uuid.uuid4().hex[:8]}")
        self.logs.mkdir()
        self.running: dict[str, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """`env`: what this process gets on top of `self.env` (another PORT, say)."""
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        process = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.running[name] = process
        return process

    def start_web(self, name: str = "web", port: int | None = None) -> subprocess.Popen:
        """gunicorn on the System's port, or on `port`: a second receiver (as on
        another host) on the same store and broker."""
        port = port or self.port
        process = self.spawn(
            name,
            str(BIN / "gunicorn"),
            "-c",
            "gunicorn.conf.py",
            "webhook_ingest.wsgi:app",
            env={"PORT": str(port)},
        )
        wait_for(
            lambda: self.ready(port), timeout=30, message=f"gunicorn to be ready ({self.logs})"
        )
        return process

    def start_worker(self, name: str = "worker", concurrency: int = 2) -> subprocess.Popen:
        return self.spawn(
            name,
            str(BIN / "python"),
            "-m",
            "workers.run",  # as the Procfile starts it
            "worker",
            f"--concurrency={concurrency}",
            "--loglevel=INFO",
            f"--hostname={name}-{uuid.uuid4().hex[:6]}@%h",
        )

    def start_beat(self, name: str = "beat") -> subprocess.Popen:
        return self.spawn(name, str(BIN / "celery"), "-A", "workers", "beat", "--loglevel=INFO")

    def wait_worker_ready(self, name: str = "worker", timeout: float = 60) -> None:
        wait_for(
            lambda: "ready." in self.log(name),
            timeout=timeout,
            message=f"{name} to be ready ({self.logs})",
        )

    def children(self, name: str) -> list[int]:
        """The pids of a process's children: gunicorn's workers, the prefork pool."""
        out = subprocess.run(
            ["pgrep", "-P", str(self.running[name].pid)], capture_output=True, text=True
        )
        return [int(pid) for pid in out.stdout.split()]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (SIGKILL: no chance to ack, requeue or release)."""
        process = self.running.get(name)
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        process.wait(60)

    def stop(self, name: str) -> None:
        self.kill(name, signal.SIGTERM)

    def stop_all(self) -> None:
        for name in list(self.running):
            try:
                self.kill(name, signal.SIGTERM)
            except subprocess.TimeoutExpired:
                self.kill(name, signal.SIGKILL)
        self.running.clear()
        if self.vhost:
            rabbitmqctl("delete_vhost", self.vhost)
            self.vhost = None

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def ready(self, port: int | None = None) -> bool:
        try:
            url = f"http://127.0.0.1:{port or self.port}/readyz"
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def readyz(self) -> tuple[int, dict]:
        answer = requests.get(f"{self.url}/readyz", timeout=5)
        return answer.status_code, answer.json()


def rabbitmqctl(*args: str) -> None:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stderr.strip()}"


# -- jobs and deliveries --------------------------------------------------------


@dataclass
class Delivery:
    """One signed Replicate delivery for a job, and what the service answered."""

    job_id: str
    external_id: str
    delivery_id: str
    payload: dict
    status: int | None = None  # HTTP status; 0 when no answer came (connection refused, reset)
    answers: list[int] = field(default_factory=list)

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def request(self) -> tuple[str, str, dict[str, str]]:
        body = body_of(self.payload)
        # signed at send time, as a provider does: a retry after an outage is fresh
        headers = signed_headers(REPLICATE_SECRET, body, msg_id=self.delivery_id)
        return f"/webhook/replicate/{self.job_id}", body, headers


def prediction(external_id: str, status: str, logs: str = "") -> dict:
    """A Replicate prediction body (providers.md): status and tqdm progress in the logs."""
    payload = {"id": external_id, "status": status, "logs": logs, "output": None, "error": None}
    if status == "succeeded":
        payload["output"] = [f"https://example.invalid/{external_id}.png"]
    if status == "failed":
        payload["error"] = "the model raised"
    return payload


def new_jobs(count: int, tag: str) -> list[tuple[str, str]]:
    """(job_id, external_id) pairs, unique to this test."""
    run = uuid.uuid4().hex[:6]
    return [(f"job-{tag}-{run}-{n}", f"pred-{tag}-{run}-{n}") for n in range(count)]


def register_jobs(store: FaultRedis, jobs: list[tuple[str, str]]) -> None:
    """The job mapping a connector records at submission, with the product's registry
    (the same script `POST /jobs` runs), one call per job."""
    from webhook_ingest.state.job_registry import JobRegistry

    client = store.client()
    registry = JobRegistry(client)
    for job_id, external_id in jobs:
        registry.register(job_id, "replicate", external_id)
    client.close()


def register_over_http(system: System, job_id: str, external_id: str) -> None:
    answer = requests.post(
        f"{system.url}/jobs",
        json={"job_id": job_id, "provider": "replicate", "external_job_id": external_id},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=5,
    )
    assert answer.status_code == 201, answer.text


def one_delivery_each(jobs: list[tuple[str, str]], status: str = "succeeded") -> list[Delivery]:
    """One terminal delivery per job: a job's state says whether its delivery applied."""
    return [
        Delivery(job_id, external_id, f"msg_{uuid.uuid4().hex}", prediction(external_id, status))
        for job_id, external_id in jobs
    ]


class Stream:
    """Sends deliveries at a steady rate from a few threads, each with its own
    keep-alive session, and records every answer. A delivery that got no 2xx is
    what a provider would retry: `resend_unacknowledged` does that later."""

    def __init__(self, system: System, deliveries: list[Delivery], rate: float, threads: int = 4):
        self.system = system
        self.deliveries = deliveries
        self.rate = rate
        self.threads = threads
        self._next = 0
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self.started_at = 0.0
        self.answered = 0  # deliveries with an answer (any status) so far

    def start(self) -> Stream:
        self.started_at = time.monotonic()
        for _ in range(self.threads):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def join(self, timeout: float = 600) -> Stream:
        deadline = time.monotonic() + timeout
        for thread in self._workers:
            thread.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._workers), "the stream did not finish"
        return self

    def _take(self) -> tuple[int, Delivery] | None:
        with self._lock:
            if self._next >= len(self.deliveries):
                return None
            index = self._next
            self._next += 1
            return index, self.deliveries[index]

    def _run(self) -> None:
        session = requests.Session()
        while (taken := self._take()) is not None:
            index, delivery = taken
            due = self.started_at + index / self.rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            send(session, self.system.url, delivery)
            with self._lock:
                self.answered += 1
        session.close()


def send(session: requests.Session, base_url: str, delivery: Delivery) -> int:
    path, body, headers = delivery.request()
    try:
        status = session.post(
            f"{base_url}{path}", data=body, headers=headers, timeout=10
        ).status_code
    except requests.RequestException:
        status = 0  # no answer: a provider retries this one
    delivery.answers.append(status)
    # The delivery's standing is its best answer: once acknowledged, a later retry
    # answered "duplicate" (200) or refused does not un-acknowledge it.
    if delivery.status is None or not delivery.acknowledged:
        delivery.status = status
    return status


def resend_unacknowledged(system: System, deliveries: list[Delivery], rounds: int = 5) -> None:
    """What providers do with every delivery that got no 2xx: retry, with a pause."""
    session = requests.Session()
    for _ in range(rounds):
        pending = [d for d in deliveries if not d.acknowledged]
        if not pending:
            break
        for delivery in pending:
            send(session, system.url, delivery)
        time.sleep(0.5)
    session.close()


# -- what was applied -----------------------------------------------------------


class Ledger:
    """What the worker wrote, read back from Redis: each job's state and the
    observations the state script recorded (delivery id and outcome)."""

    def __init__(self, store: FaultRedis) -> None:
        self.store = store

    def states(self, job_ids: list[str]) -> dict[str, dict]:
        client = self.store.client()
        pipe = client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(keys.job_state(job_id))
        values = pipe.execute()
        client.close()
        return dict(zip(job_ids, values, strict=True))

    def events(self, job_ids: list[str]) -> dict[str, list[dict]]:
        """Each job's `job_events`: every observation with its delivery id and outcome."""
        client = self.store.client()
        pipe = client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.lrange(keys.job_events(job_id), 0, -1)
        lists = pipe.execute()
        client.close()
        return {
            job_id: [json.loads(raw) for raw in raw_events]
            for job_id, raw_events in zip(job_ids, lists, strict=True)
        }

    def applications(self, job_ids: list[str]) -> Counter:
        """How many times each delivery id changed its job's state (outcome 'applied')."""
        return Counter(
            event["delivery_id"]
            for job_events in self.events(job_ids).values()
            for event in job_events
            if event.get("outcome") == "applied" and event.get("delivery_id")
        )

    def wait_applied(
        self, deliveries: list[Delivery], status: str = "completed", timeout: float = 120
    ) -> dict[str, dict]:
        """Waits until every acknowledged delivery's job has reached `status`; returns
        the states of all jobs (the caller decides what a miss means)."""
        wanted = sorted({d.job_id for d in deliveries if d.acknowledged})
        deadline = time.monotonic() + timeout
        while True:
            states = self.states(wanted)
            missing = [j for j, s in states.items() if s.get("status") != status]
            if not missing or time.monotonic() > deadline:
                return states
            time.sleep(0.5)


@dataclass
class Counts:
    sent: int
    acknowledged: int
    applied: int
    lost: int
    duplicated: int

    def line(self, name: str, **extra) -> str:
        more = "".join(f" {k}={v}" for k, v in extra.items())
        return (
            f"{name}: sent={self.sent} acknowledged={self.acknowledged} applied={self.applied} "
            f"lost={self.lost} duplicated={self.duplicated}{more}"
        )


def count(
    ledger: Ledger, deliveries: list[Delivery], status: str = "completed", timeout: float = 120
) -> Counts:
    """Counts for one-delivery-per-job streams: an acknowledged delivery is applied
    when its job reached `status`; lost when it did not within `timeout`;
    duplicated when its delivery id changed state more than once."""
    states = ledger.wait_applied(deliveries, status, timeout)
    acknowledged = [d for d in deliveries if d.acknowledged]
    applied = [d for d in acknowledged if states.get(d.job_id, {}).get("status") == status]
    applications = ledger.applications([d.job_id for d in deliveries])
    return Counts(
        sent=len(deliveries),
        acknowledged=len(acknowledged),
        applied=len(applied),
        lost=len(acknowledged) - len(applied),
        duplicated=sum(1 for n in applications.values() if n > 1),
    )


def tally(
    deliveries: list[Delivery], events: dict[str, list[dict]]
) -> tuple[Counts, Counter, list[str], list[str]]:
    """Counts for streams of many deliveries per job, from `Ledger.events`: applied =
    delivery ids that changed their job's state; lost = acknowledged delivery ids the
    state script never observed; duplicated = ids applied more than once. Also the
    observations by outcome, the lost ids and the ids applied more than once."""
    outcomes: Counter = Counter()
    applied_ids: Counter = Counter()
    observed: set[str] = set()
    for job_events in events.values():
        for event in job_events:
            outcomes[event["outcome"]] += 1
            observed.add(event["delivery_id"])
            if event["outcome"] == "applied":
                applied_ids[event["delivery_id"]] += 1
    acknowledged = [d for d in deliveries if d.acknowledged]
    lost = [d.delivery_id for d in acknowledged if d.delivery_id not in observed]
    duplicated = [delivery_id for delivery_id, n in applied_ids.items() if n > 1]
    counts = Counts(
        sent=len(deliveries),
        acknowledged=len(acknowledged),
        applied=len(applied_ids),
        lost=len(lost),
        duplicated=len(duplicated),
    )
    return counts, outcomes, lost, duplicated


def report(name: str, counts: Counts, **extra) -> str:
    """Prints the counts now and again in the run's summary (tests/conftest.py)."""
    line = counts.line(name, **extra)
    print(f"\nFAULTS {line}")
    COUNTS.append(line)
    return line

"""Beat, the real `celery -A workers beat` processes (contract §1: one lock-holder at a time).

Each test runs on a redis-server of its own with ORPHAN_POLL_INTERVAL_SECONDS=2
and no worker unless it says so, so every message beat sends stays on the
broker queue where the test can read it.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest
import redis

from tests.support import PrivateRedis, celery_for, wait_for
from webhook_ingest.state import keys

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
QUEUE = "webhook_ingest"  # celeryconfig.task_default_queue
POLL_ORPHANS = "webhook_ingest.poll_orphans"
INTERVAL = 2  # ORPHAN_POLL_INTERVAL_SECONDS for these tests
LOCK_TIMEOUT, MAX_LOOP = 30, 5  # celeryconfig: redbeat_lock_timeout, beat_max_loop_interval
LOCK_KEY = "webhook_ingest:redbeat:lock"


class Processes:
    """celery beat / worker subprocesses on one private Redis, as the Procfile runs them."""

    def __init__(self, redis_url: str, extra_env: dict[str, str] | None = None) -> None:
        self.env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "ORPHAN_POLL_INTERVAL_SECONDS": str(INTERVAL),
            **(extra_env or {}),
        }
        self.logs = Path(f"/tmp/wi-beat-{uuid.uuid4().hex[:8]}")
        self.logs.mkdir()
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        process = subprocess.Popen(
            [str(BIN / "celery"), "-A", "workers", *args, "--loglevel=INFO"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running[name] = process
        return process

    def beat(self, name: str) -> subprocess.Popen:
        return self.start(name, "beat")

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str, sig: int = signal.SIGTERM) -> None:
        process = self.running.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, sig)
            process.wait(30)

    def stop_all(self) -> None:
        for name in list(self.running):
            self.kill(name)


@pytest.fixture
def private_redis():
    server = PrivateRedis().start()
    yield server
    server.cleanup()


@pytest.fixture
def store(private_redis):
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def processes(private_redis, fake_api):
    procs = Processes(private_redis.url)
    yield procs
    procs.stop_all()


def queued(store: redis.Redis, task: str = POLL_ORPHANS) -> list[dict]:
    """The kombu messages for `task` waiting on the broker queue, oldest first."""
    messages = [json.loads(raw) for raw in store.lrange(QUEUE, 0, -1)]
    # kombu's Redis transport LPUSHes and consumes from the right: reverse for send order
    return [m for m in reversed(messages) if m["headers"]["task"] == task]


def sending(log: str) -> bool:
    return f"Sending due task poll-orphans ({POLL_ORPHANS})" in log


def test_two_beats_send_each_tick_once(processes, store):
    processes.beat("beat-a")
    processes.beat("beat-b")
    wait_for(lambda: queued(store), timeout=30, message="the first poll_orphans tick")
    started = time.monotonic()
    time.sleep(12)
    window = time.monotonic() - started
    sent = len(queued(store))
    # Read the logs before stopping: a gracefully stopped holder releases the lock,
    # and the standby would then log its own acquisition on the way out.
    logs = {name: processes.log(name) for name in ("beat-a", "beat-b")}
    processes.stop_all()

    expected = window / INTERVAL
    holders = [name for name, log in logs.items() if "beat: Acquired lock" in log]
    senders = [name for name, log in logs.items() if sending(log)]
    print(
        f"\npoll_orphans messages in {window:.1f} s with two beats: {sent} "
        f"(one beat every {INTERVAL} s: {expected:.1f}); lock holder {holders}, senders {senders}"
    )
    assert expected - 2 <= sent <= expected + 2 + 1  # +1: the first tick before the window
    assert len(holders) == 1, logs
    assert senders == holders


def test_the_standby_takes_over_when_the_active_beat_dies(processes, store):
    processes.beat("beat-a")
    wait_for(lambda: "beat: Acquired lock" in processes.log("beat-a"), timeout=30)
    processes.beat("beat-b")
    wait_for(lambda: len(queued(store)) >= 2, timeout=30, message="beat-a to tick")
    time.sleep(3)  # beat-b is up and waiting for the lock
    assert "beat: Acquired lock" not in processes.log("beat-b")
    assert store.exists(LOCK_KEY)

    processes.kill("beat-a", signal.SIGKILL)  # no chance to release its lock
    killed = time.monotonic()
    before = len(queued(store))

    wait_for(
        lambda: len(queued(store)) > before,
        timeout=LOCK_TIMEOUT + MAX_LOOP + 5,
        interval=0.1,
        message="the standby beat to send a tick",
    )
    handover = time.monotonic() - killed
    print(f"\nhandover after SIGKILL of the active beat: {handover:.1f} s")
    assert handover <= LOCK_TIMEOUT + MAX_LOOP + 5
    assert "beat: Acquired lock" in processes.log("beat-b")
    assert sending(processes.log("beat-b"))


def first_seen(store: redis.Redis, deadline: float) -> dict[str, tuple[float, dict]]:
    """poll_orphans messages by task id, with the wall time each was first seen queued."""
    seen: dict[str, tuple[float, dict]] = {}
    while time.monotonic() < deadline:
        now = time.time()
        for message in queued(store):
            seen.setdefault(message["headers"]["id"], (now, message))
        time.sleep(0.05)
    return seen


def test_a_tick_nobody_ran_in_time_expires_instead_of_piling_up(processes, store, fake_api):
    # A stale job: if any of the ticks queued below ran, it would be polled.
    job_id, external_id = f"job-{uuid.uuid4().hex[:8]}", f"pred_{uuid.uuid4().hex[:8]}"
    path = f"/v1/predictions/{external_id}"
    fake_api.respond("GET", path, (200, {"id": external_id, "status": "succeeded", "output": 1}))
    store.hset(
        keys.job_mapping(job_id),
        mapping={"external_job_id": external_id, "provider": "replicate", "created_at": 1},
    )
    store.zadd(keys.live_jobs("replicate"), {job_id: 1})

    processes.beat("beat")
    wait_for(lambda: queued(store), timeout=30, message="the first poll_orphans tick")
    seen = first_seen(store, time.monotonic() + 3 * INTERVAL)
    processes.kill("beat")

    assert len(seen) >= 2
    for observed, message in seen.values():
        expires = message["headers"].get("expires")
        assert expires, f"poll_orphans sent without expires: {message['headers']}"
        left = datetime.fromisoformat(expires).timestamp() - observed
        # sent <= observed, so expires - sent <= INTERVAL implies this:
        assert left <= INTERVAL, f"expires {expires} is more than {INTERVAL} s after sending"
        assert left > -0.5, f"expires {expires} was already past when queued"
        assert json.loads(base64.b64decode(message["body"]))[0] == []  # no args: a plain tick

    # A worker that comes back later drops the stale ticks instead of polling for each.
    time.sleep(INTERVAL + 0.5)
    processes.start("worker", "worker", "--pool=solo", f"--hostname=beat-{job_id}@%h")
    wait_for(
        lambda: "Discarding revoked task" in processes.log("worker") and not queued(store),
        timeout=30,
        message="the worker to discard the expired ticks",
    )
    time.sleep(1)
    discarded = [
        line
        for line in processes.log("worker").splitlines()
        if "Discarding revoked task" in line and f"{POLL_ORPHANS}[" in line
    ]
    print(f"\nexpired poll_orphans ticks discarded by the worker: {len(discarded)} of {len(seen)}")
    assert len(discarded) >= len(seen)
    assert fake_api.calls("GET", path) == 0
    assert not store.hgetall(keys.job_state(job_id))

    # The same worker does run a tick that is still fresh: the job was pollable all along.
    celery_for(processes.env["CELERY_BROKER_URL"]).send_task(POLL_ORPHANS, expires=INTERVAL * 5)
    wait_for(lambda: store.hget(keys.job_state(job_id), "status") == "completed", timeout=30)
    assert store.hget(keys.job_state(job_id), "source") == "orphan_poll"

"""Two beats for 60 s, then the active one SIGKILLed: polls stay once per interval.

A worker and two `celery beat` processes on one private Redis, with
ORPHAN_POLL_INTERVAL_SECONDS=5 and ORPHAN_AFTER_SECONDS=1, so the Replicate jobs
registered here are stale from the start. Their polls go to a FakeProviderAPI of
this test's own that answers `processing` (the jobs stay live) and records when
each request came.

Bounds, from the settings:

- Polls per job in the 60 s window: one beat holds the RedBeat lock and sends
  `poll_orphans` every interval; each tick takes the stale jobs and moves them
  one interval ahead atomically (webhook_ingest.operations.orphan_poller), so a job is polled
  once per tick: 60 / 5 = 12, ± 2 for the window's edges and for a tick the
  worker runs a little early or late. Two polls of one job closer than half an
  interval would be a double poll (the spread of one tick's polls is
  `index × 60 / ORPHAN_POLLS_PER_MINUTE` = 0.5 s per job, the same offset for a
  job in every tick). A tick that skipped a job would leave two intervals
  between its polls: the widest gap in the window must stay under 2 × 5 - 1 s.
- Handover: the killed holder's lock lives until `redbeat_lock_timeout` (30 s)
  after its last renewal, and the standby tries every `beat_max_loop_interval`
  (5 s); its first tick is due at once (the schedule's last run is in Redis), and
  the polls follow within the spread (2 s for five jobs). Bound: 30 + 5 + 5 s of
  slack for a busy two-core box = 40 s (README, "Running two beats": about 35 s).

The counts line reports polls (no webhooks are sent here): every poll the fake
API answered, none lost or duplicated by construction; the figures that matter
are the extra ones (polls per job, gaps, handover).
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import defaultdict

import pytest

from tests.faults.fault_harness import Counts, register_jobs, report
from tests.support import FakeProviderAPI, wait_for

INTERVAL = 5  # ORPHAN_POLL_INTERVAL_SECONDS

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.faults,
    pytest.mark.system_env(ORPHAN_POLL_INTERVAL_SECONDS=str(INTERVAL), ORPHAN_AFTER_SECONDS="1"),
]

LOCK_TIMEOUT, MAX_LOOP = 30, 5  # celeryconfig: redbeat_lock_timeout, beat_max_loop_interval
HANDOVER_BOUND = LOCK_TIMEOUT + MAX_LOOP + 5
WINDOW = 60
JOBS = 5
ACQUIRED = "beat: Acquired lock"


class TimedRequests(list):
    """FakeProviderAPI.requests with the monotonic time each request arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def append(self, item: dict) -> None:
        item["at"] = time.monotonic()
        super().append(item)


def polls(api: FakeProviderAPI, paths: dict[str, str]) -> dict[str, list[float]]:
    """Poll times per job (job_id -> times), from the requests the fake API recorded."""
    by_job: dict[str, list[float]] = defaultdict(list)
    with api._lock:
        requests = list(api.requests)
    for request in requests:
        job_id = paths.get(request["path"])
        if request["method"] == "GET" and job_id:
            by_job[job_id].append(request["at"])
    return by_job


def in_window(times: list[float], start: float, end: float) -> list[float]:
    return [t for t in times if start <= t < end]


def max_gap(times: list[float]) -> float:
    ordered = sorted(times)
    return max((b - a for a, b in zip(ordered, ordered[1:], strict=False)), default=0.0)


def min_gap(times: list[float]) -> float:
    ordered = sorted(times)
    return min((b - a for a, b in zip(ordered, ordered[1:], strict=False)), default=float("inf"))


@pytest.fixture
def timed_api():
    """A FakeProviderAPI of this test's own that records when each request came."""
    api = FakeProviderAPI()
    api.requests = TimedRequests()
    yield api.start()
    api.stop()


def test_two_beats_poll_each_stale_job_once_per_interval_and_hand_over_after_sigkill(
    store, system, timed_api
):
    started = time.monotonic()
    api = timed_api
    run = uuid.uuid4().hex[:6]
    jobs = [(f"job-beat-{run}-{n}", f"pred-beat-{run}-{n}") for n in range(JOBS)]
    paths = {f"/v1/predictions/{ext}": job_id for job_id, ext in jobs}
    for _, ext in jobs:
        path = f"/v1/predictions/{ext}"
        api.respond("GET", path, (200, {"id": ext, "status": "processing", "logs": ""}))
    system.env["REPLICATE_BASE_URL"] = f"{api.url}/v1"
    register_jobs(store, jobs)
    system.start_worker(concurrency=2)
    system.wait_worker_ready()
    system.start_beat("beat-a")
    system.start_beat("beat-b")
    wait_for(
        lambda: len(polls(api, paths)) == JOBS,
        timeout=60,
        interval=0.1,
        message="every stale job's first poll",
    )
    # -- 60 s with two beats ---------------------------------------------------
    window_start = time.monotonic()
    time.sleep(WINDOW)
    window_end = time.monotonic()
    logs = {name: system.log(name) for name in ("beat-a", "beat-b")}
    holders = [name for name, log in logs.items() if ACQUIRED in log]
    senders = [name for name, log in logs.items() if "Sending due task poll-orphans" in log]
    assert len(holders) == 1, {n: log[-2000:] for n, log in logs.items()}
    active = holders[0]
    standby = "beat-b" if active == "beat-a" else "beat-a"

    # -- SIGKILL the holder: no chance to release its lock ---------------------
    system.kill(active, signal.SIGKILL)
    killed = time.monotonic()
    acquired_at = wait_for(
        lambda: ACQUIRED in system.log(standby) and time.monotonic(),
        timeout=HANDOVER_BOUND + 10,
        interval=0.1,
        message="the standby beat to acquire the lock",
    )
    resumed_at = wait_for(
        lambda: min(
            (t for times in polls(api, paths).values() for t in times if t > acquired_at),
            default=None,
        ),
        timeout=HANDOVER_BOUND + 10,
        interval=0.1,
        message="polls to resume",
    )
    # a few intervals under the new holder
    time.sleep(3 * INTERVAL)
    end = time.monotonic()
    by_job = polls(api, paths)

    handover = resumed_at - killed
    per_job = {
        job_id: len(in_window(by_job[job_id], window_start, window_end)) for job_id, _ in jobs
    }
    gaps = {job_id: min_gap(by_job[job_id]) for job_id, _ in jobs}
    widest = max(max_gap(in_window(by_job[job_id], window_start, window_end)) for job_id, _ in jobs)
    after = {job_id: len(in_window(by_job[job_id], resumed_at - 1, end)) for job_id, _ in jobs}
    expected = (window_end - window_start) / INTERVAL
    total = sum(len(t) for t in by_job.values())
    report(
        "two beats",
        Counts(sent=total, acknowledged=total, applied=total, lost=0, duplicated=0),
        polls_per_job_in_60s=sorted(per_job.values()),
        expected=f"{expected:.1f}",
        min_gap_s=f"{min(gaps.values()):.2f}",
        max_gap_in_60s=f"{widest:.2f}",
        holder=active,
        senders=senders,
        lock_acquired_after_s=f"{acquired_at - killed:.1f}",
        handover_s=f"{handover:.1f}",
        handover_bound_s=HANDOVER_BOUND,
        polls_after_handover=sorted(after.values()),
        wall=f"{time.monotonic() - started:.1f}s",
    )
    assert senders == [active], "the standby sent ticks while the holder was alive"
    for job_id, n in per_job.items():
        assert expected - 2 <= n <= expected + 2, (job_id, n, per_job)
    assert min(gaps.values()) > INTERVAL / 2, gaps
    # no tick skipped a job: a skipped one leaves two intervals between its polls
    assert widest < 2 * INTERVAL - 1, widest
    assert handover <= HANDOVER_BOUND, handover
    # the standby's ticks poll every job, once each per interval
    assert all(n >= 3 for n in after.values()), after

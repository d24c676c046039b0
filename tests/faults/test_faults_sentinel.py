"""The state Redis's master SIGKILLed mid-stream behind Redis Sentinel (fault suite).

One master, two replicas and three sentinels on loopback ports
(tests/sentinel_cluster.py), the service's processes (gunicorn, a Celery worker,
beat) on `REDIS_URL=redis+sentinel://...` — state and broker on the master the
sentinels name, so the receiver takes the one-script hand-off. A steady signed
stream; BEFORE seconds in the master is SIGKILLed; the sentinels promote a
replica (down-after 1 s, quorum 2); the processes are not restarted. Then the
providers' retries of everything that got no 2xx, and the count.

With REDIS_MIN_REPLICA_ACKS=1 the receiver answers 2xx only once a replica holds
the delivery's claim, journal record and queued message (WAIT), and the worker
acknowledges a task only once a replica holds its outcome: whichever replica is
promoted has every acknowledged delivery (the sentinels promote the replica with
the most data), so nothing acknowledged is lost. While no master answers, or the
new master has no replica yet to confirm, the answer is 503 with Retry-After.
With REDIS_MIN_REPLICA_ACKS=0 the same stream is measured for comparison: a write
the master acknowledged and had not yet sent to a replica is gone with it. On
loopback a replica is a fraction of a millisecond behind, so the replicas are
frozen (SIGSTOP) for the last BEHIND seconds before the kill, with more written
meanwhile than the sockets between them buffer (fall_behind), and resumed right
after it, as replicas behind a stalled network are: with acknowledgement off,
what the master answered 202 in those seconds is lost.
docs/operations.md, "Redis Sentinel", quotes both counts.

Bounds: the sentinels see the master down after 1 s and promote a replica
within a few seconds (failover-timeout 5 s); the worker reconnects with kombu's
backoff (at most 30 s between attempts) and the messages it had reserved come
back after the visibility timeout (10 s); beat's redrive takes over what the
broker lost (JOURNAL_REDRIVE_AFTER_SECONDS 20): everything acknowledged is
applied within about a minute of the promotion. The test waits up to 120 s.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
import requests

from tests.faults.fault_harness import (
    JOURNAL_ENV,
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
from tests.sentinel_cluster import MASTER, SentinelCluster
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

RATE = 25  # deliveries per second
SECONDS = 20  # of stream
BEFORE = 6.0  # seconds of stream before the kill
BEHIND = 1.5  # of them, the replicas frozen (SIGSTOP) before the kill
BALLAST_MB, BALLAST_DB = 48, 15  # written meanwhile (fall_behind)
# Writes paused on the master before a manual failover: longer than the sentinels
# take to promote a replica and turn the old master into its replica (2-3 s here).
PAUSE_MS = 5000
BEAT_TICK = "Sending due task redrive-journal"


def fall_behind(cluster: SentinelCluster) -> None:
    """Writes BALLAST_MB of ballast to the master while its replicas are frozen,
    into a database the service does not use: more than the kernel's socket
    buffers hold between the master and a frozen replica (up to 32 MiB received +
    4 MiB sent on loopback here), so what the master writes next waits in its own
    memory, and dies with it, instead of in a buffer the replica reads on waking."""
    master = cluster.master(db=BALLAST_DB)
    chunk = b"x" * 1_048_576
    pipe = master.pipeline(transaction=False)
    for n in range(BALLAST_MB):
        pipe.set(f"ballast:{n}", chunk)
    pipe.execute()


class SentinelStore:
    """What the harness's System and Ledger need of a store, for a SentinelCluster:
    the service's URL, and a client of whichever node is master now."""

    def __init__(self, cluster: SentinelCluster) -> None:
        self.cluster = cluster
        self.url = cluster.url(0)

    def client(self) -> redis.Redis:
        return wait_for(self._master, timeout=30, message="a master to answer")

    def _master(self) -> redis.Redis | None:
        try:
            client = self.cluster.master()
            client.ping()
        except (redis.RedisError, AssertionError):
            return None
        return client


class ReadyzProbe(threading.Thread):
    """Asks /readyz four times a second; keeps (status, body, Retry-After)."""

    def __init__(self, system: System) -> None:
        super().__init__(daemon=True)
        self.system = system
        self.seen: list[tuple[int, dict, str | None]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                answer = requests.get(f"{self.system.url}/readyz", timeout=5)
                self.seen.append(
                    (answer.status_code, answer.json(), answer.headers.get("Retry-After"))
                )
            except (requests.RequestException, ValueError):
                self.seen.append((0, {}, None))
            self.halt.wait(0.25)


@pytest.fixture
def cluster():
    deployment = SentinelCluster(replicas=2, sentinels=3).start()
    yield deployment
    deployment.cleanup()


def start_system(cluster: SentinelCluster, min_acks: int) -> tuple[SentinelStore, System]:
    """web, worker and beat as the Procfile starts them, on the cluster's URL."""
    store = SentinelStore(cluster)
    system = System(  # type: ignore[arg-type] - a store in all the harness uses
        store,
        "redis",
        {
            **JOURNAL_ENV,
            "REDIS_MIN_REPLICA_ACKS": str(min_acks),
            "ORPHAN_POLL_INTERVAL_SECONDS": "2",
        },
    )
    try:
        system.start_web()
        system.start_worker()
        system.start_beat()
        system.wait_worker_ready()
        wait_for(lambda: BEAT_TICK in system.log("beat"), timeout=30, message="beat's first tick")
    except BaseException:
        system.stop_all()
        raise
    return store, system


@pytest.mark.parametrize("min_acks", [1, 0])
def test_master_killed_mid_stream_sentinel_promotes_and_nothing_acknowledged_is_lost(
    cluster, min_acks
):
    store, system = start_system(cluster, min_acks)
    try:
        processes = {name: process.pid for name, process in system.running.items()}

        jobs = new_jobs(int(RATE * SECONDS), f"sentinel{min_acks}")
        register_jobs(store, jobs)  # type: ignore[arg-type]
        deliveries = one_delivery_each(jobs)
        probe = ReadyzProbe(system)
        probe.start()
        stream = Stream(system, deliveries, rate=RATE).start()
        time.sleep(BEFORE - BEHIND)
        # The replicas fall behind, then the master dies: what it acknowledged in
        # the meantime exists only on it, unless it waited for a replica.
        replicas = cluster.replica_ports()
        for port in replicas:
            cluster.pause(port)
        fall_behind(cluster)
        time.sleep(BEHIND)
        old = cluster.kill_master()
        killed_at = time.monotonic()
        for port in replicas:
            cluster.resume(port)
        cluster.wait_new_master(old)
        promoted_after = time.monotonic() - killed_at
        stream.join(timeout=180)
        first_pass = sum(1 for d in deliveries if d.acknowledged)
        resend_unacknowledged(system, deliveries, rounds=20)
        # Without acknowledgement some are lost for good: waiting for them past every
        # recovery path (the visibility timeout, beat's redrive after 20 s) is enough.
        wait = 120 if min_acks else 60
        counts = count(Ledger(store), deliveries, timeout=wait)  # type: ignore[arg-type]
        probe.halt.set()
        probe.join(10)

        answers = [status for d in deliveries for status in d.answers]
        refused = answers.count(503)
        report(
            f"sentinel master SIGKILL, REDIS_MIN_REPLICA_ACKS={min_acks}",
            counts,
            first_pass=first_pass,
            answered_503=refused,
            no_answer=answers.count(0),
            promoted_after_s=round(promoted_after, 1),
        )
        # No process was restarted: the same ones are running.
        for name, pid in processes.items():
            assert system.running[name].pid == pid and system.running[name].poll() is None, (
                f"{name} exited ({system.logs})"
            )
        assert counts.acknowledged == counts.sent, "the providers' retries got every one a 2xx"
        assert counts.duplicated == 0
        if min_acks:
            assert counts.lost == 0, f"acknowledged and lost across the failover ({system.logs})"
        # The switch was answered 503 with Retry-After, and /readyz said what was switching.
        assert refused > 0, "the receiver answered the switch with 503s"
        down = [(body, retry) for status, body, retry in probe.seen if status == 503]
        assert down and all(retry for _, retry in down)
        assert any("switching" in body for body, _ in down), down[:3]
        assert probe.seen[-1][0] == 200, probe.seen[-3:]
        # Beat kept its lock through the failover (one beat, its lock on the new
        # master) and its ticks went on: a tick after the promotion.
        tick_mark = system.log("beat").count(BEAT_TICK)
        wait_for(
            lambda: system.log("beat").count(BEAT_TICK) > tick_mark,
            timeout=30,
            message="beat to tick on the new master",
        )
        assert store.client().exists("webhook_ingest:redbeat:lock")
        # The old master comes back (a supervisor restarts it, with its AOF): the
        # sentinels make it a replica of the new one, and nothing consumes from it
        # or writes to it meanwhile: a delivery sent now is applied once.
        cluster.restart(old)
        wait_for(
            lambda: cluster.node(old).info("replication").get("master_link_status") == "up",
            timeout=30,
            message="the old master to follow the new one",
        )
        # (not necessarily `new`: on a loaded machine the sentinels may fail over
        # again, the promoted master missing their 1 s deadline during its resyncs)
        assert cluster.master_port() != old
        fresh = new_jobs(5, f"after{min_acks}")
        register_jobs(store, fresh)  # type: ignore[arg-type]
        late = one_delivery_each(fresh)
        resend_unacknowledged(system, late, rounds=10)
        assert count(Ledger(store), late, timeout=60).lost == 0  # type: ignore[arg-type]
    finally:
        system.stop_all()


@pytest.mark.parametrize("writes_paused_first", [True, False])
def test_a_master_demoted_by_a_manual_failover_is_left_by_every_process(
    cluster, writes_paused_first
):
    """`SENTINEL FAILOVER` (maintenance, an upgrade): the master is demoted to a
    replica while every process is connected to it. Writes to it then answer
    READONLY, which the clients take for a lost connection: they ask the
    sentinels again and move to the new master; nothing keeps consuming from, or
    writing to, the demoted node.

    Sentinel's manual failover does not stop the old master first: it promotes a
    replica and tells the old master to follow it a moment later, and meanwhile
    the old master still takes writes, which the replica not promoted confirms
    (WAIT) and which are then thrown away (redis/redis#4819, #13118). So the
    procedure docs/operations.md gives pauses writes on the master first
    (`CLIENT PAUSE <ms> WRITE`, the first step of Redis's own coordinated
    FAILOVER): nothing acknowledged is lost. Without the pause the loss is
    measured and reported, for the docs."""
    store, system = start_system(cluster, min_acks=1)
    try:
        processes = {name: process.pid for name, process in system.running.items()}
        jobs = new_jobs(RATE * 12, "demoted")
        register_jobs(store, jobs)  # type: ignore[arg-type]
        deliveries = one_delivery_each(jobs)
        stream = Stream(system, deliveries, rate=RATE).start()
        time.sleep(4)
        old = cluster.master_port()
        if writes_paused_first:
            cluster.node(old).execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
        assert cluster.sentinel().execute_command("SENTINEL", "FAILOVER", MASTER)
        cluster.wait_new_master(old)
        stream.join(timeout=120)
        resend_unacknowledged(system, deliveries, rounds=20)
        wait = 120 if writes_paused_first else 60
        counts = count(Ledger(store), deliveries, timeout=wait)  # type: ignore[arg-type]
        answers = [status for d in deliveries for status in d.answers]
        how = "writes paused first" if writes_paused_first else "SENTINEL FAILOVER alone"
        report(
            f"sentinel manual failover ({how}), REDIS_MIN_REPLICA_ACKS=1",
            counts,
            answered_503=answers.count(503),
        )
        assert counts.acknowledged == counts.sent
        assert counts.duplicated == 0
        if writes_paused_first:
            assert counts.lost == 0, system.logs
        for name, pid in processes.items():
            assert system.running[name].pid == pid and system.running[name].poll() is None, name
        demoted = cluster.node(old)
        wait_for(
            lambda: demoted.info("replication").get("role") == "slave",
            timeout=30,
            message="the old master to be a replica",
        )
        # Nobody consumes from the demoted node: no client blocked there, none whose
        # last command was the consumer's BRPOP (it gets READONLY at once on a
        # replica and moves). A pooled connection idle since before the switch may
        # still be open; its next command gets READONLY and moves too, and a
        # replica takes no write.
        clients = demoted.client_list()
        assert not [c for c in clients if c.get("cmd") == "brpop" or "b" in c.get("flags", "")], [
            (c.get("cmd"), c.get("flags")) for c in clients
        ]
        assert demoted.config_get("replica-read-only")["replica-read-only"] == "yes"
        # (not necessarily `new`: on a loaded machine the sentinels may fail over
        # again, the promoted master missing their 1 s deadline during its resyncs)
        assert cluster.master_port() != old
    finally:
        system.stop_all()

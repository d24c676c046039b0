"""Issue 18, item 2: REDIS_MIN_REPLICA_ACKS — no 2xx, and no task acknowledged,
before replicas hold the write (webhook_ingest.state.replica_acks).

A private master and a real replica (`--replicaof`) on loopback ports; the replica
is frozen with SIGSTOP (still connected, acknowledging nothing: what a lagging or
partitioned replica looks like to the master) and thawed with SIGCONT.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid

import pytest
import redis
from prometheus_client import REGISTRY

from tests.conftest import REPLICATE_SECRET
from tests.faults.fault_harness import System
from tests.support import (
    PrivateRedis,
    body_of,
    queued_in,
    seen_buckets,
    signed_headers,
    wait_for,
)
from webhook_ingest.state import keys


class Replicated:
    """A master and one replica of it, each a private redis-server."""

    def __init__(self) -> None:
        # diskless sync at once: the default waits 5 s for more replicas to join
        self.master = PrivateRedis("--repl-diskless-sync-delay", "0").start()
        self.replica = PrivateRedis("--replicaof", "127.0.0.1", str(self.master.port)).start()
        self.on_master = redis.Redis(port=self.master.port, decode_responses=True)
        self.on_replica = redis.Redis(port=self.replica.port, decode_responses=True)
        wait_for(self.in_sync, timeout=15, message="the replica to sync")

    def in_sync(self) -> bool:
        """The replica acknowledges writes (a replica just done with its first sync is
        "online" and "up" a moment before it does)."""
        self.on_master.set("replication-probe", "1")
        return self.on_master.wait(1, 100) == 1

    def freeze(self) -> None:
        os.kill(self.replica.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.replica.process.pid, signal.SIGCONT)

    def waits_sent(self) -> int:
        return int(self.on_master.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))

    def close(self) -> None:
        self.thaw()  # a stopped process would not take SIGTERM
        self.on_master.close()
        self.on_replica.close()
        self.replica.cleanup()
        self.master.cleanup()


@pytest.fixture
def replicated():
    servers = Replicated()
    yield servers
    servers.close()


def shortfalls(process: str) -> float:
    value = REGISTRY.get_sample_value("webhook_replica_ack_timeouts_total", {"process": process})
    return value or 0.0


def a_delivery(prediction: str | None = None) -> tuple[str, str, dict[str, str]]:
    """(job id, body, headers) of a signed Replicate delivery about `prediction`."""
    job_id = f"job-{uuid.uuid4().hex[:12]}"
    body = body_of({"id": prediction or f"pred-{uuid.uuid4().hex[:8]}", "status": "processing"})
    return job_id, body, signed_headers(REPLICATE_SECRET, body)


def post(receiver, job_id: str, body: str, headers: dict[str, str]):
    return receiver.client.post(f"/webhook/replicate/{job_id}", data=body, headers=headers)


def held(client: redis.Redis, job_id: str, headers: dict[str, str]) -> bool:
    """The delivery's claim and its journal record, both, on `client`'s server."""
    msg_id = headers["webhook-id"]
    member = f"replicate/{job_id}/{msg_id}"
    claimed = bool(seen_buckets(client, "replicate", msg_id, job_id))
    return claimed and client.hexists(keys.JOURNAL_MESSAGES, member)


def assert_503(response) -> None:
    assert response.status_code == 503, (response.status_code, response.get_data(as_text=True))
    assert response.headers.get("Retry-After"), response.headers
    assert response.is_json and response.get_json().get("error"), response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["single_script", "journal_then_publish"])
def test_a_2xx_only_once_the_replica_holds_the_claim_and_journal_record(
    replicated, receiver_with, path, own_redis
):
    # journal_then_publish: the broker is another server, as RabbitMQ would be
    broker = replicated.master.url if path == "single_script" else own_redis.url
    receiver = receiver_with(
        redis_url=replicated.master.url, broker_url=broker, REDIS_MIN_REPLICA_ACKS=1
    )
    job_id, body, headers = a_delivery()

    accepted = post(receiver, job_id, body, headers)

    assert accepted.status_code == 202, accepted.get_data(as_text=True)
    # at once, on the replica: WAIT said it acknowledged the write
    assert held(replicated.on_replica, job_id, headers)

    replicated.freeze()
    job_id, body, headers = a_delivery()
    before = shortfalls("receiver")
    started = time.monotonic()

    refused = post(receiver, job_id, body, headers)

    assert_503(refused)
    assert time.monotonic() - started < 2, "the WAIT's timeout bounds the answer"
    assert shortfalls("receiver") == before + 1
    # the write is on the master, and the delivery on its way to a worker
    assert held(replicated.on_master, job_id, headers)
    broker_client = redis.Redis.from_url(broker)
    assert queued_in(broker_client) == 2
    broker_client.close()

    # The provider retries while the replica is still behind: the claim is found, but a
    # duplicate is no more confirmed than the first answer was.
    assert_503(post(receiver, job_id, body, headers))

    replicated.thaw()
    wait_for(lambda: held(replicated.on_replica, job_id, headers), timeout=10)
    retried = post(receiver, job_id, body, headers)

    # The claim survived (no failover): a duplicate, 2xx, as the journal record survived
    # with it; a failover that lost both would have let this retry claim it anew.
    assert retried.status_code == 200, retried.get_data(as_text=True)
    assert retried.get_json() == {"received": True, "duplicate": True}


def test_with_no_minimum_nothing_changes_and_no_wait_is_sent(replicated, receiver_with):
    receiver = receiver_with(redis_url=replicated.master.url, REDIS_MIN_REPLICA_ACKS=None)
    replicated.on_master.config_resetstat()
    replicated.freeze()  # no replica answers: without WAIT, nobody asks it
    job_id, body, headers = a_delivery()

    assert post(receiver, job_id, body, headers).status_code == 202
    assert post(receiver, job_id, body, headers).status_code == 200

    assert replicated.waits_sent() == 0


def test_one_wait_per_delivery_with_a_minimum(replicated, receiver_with):
    receiver = receiver_with(redis_url=replicated.master.url, REDIS_MIN_REPLICA_ACKS=1)
    # the first delivery on a new master also loads the script (NOSCRIPT, then again)
    assert post(receiver, *a_delivery()).status_code == 202
    replicated.on_master.config_resetstat()

    assert post(receiver, *a_delivery()).status_code == 202

    assert replicated.waits_sent() == 1  # and no SCRIPT EXISTS / second round trip
    stats = replicated.on_master.info("commandstats")
    assert "cmdstat_script|exists" not in stats and "cmdstat_script" not in stats, stats


def test_the_worker_does_not_acknowledge_a_task_before_the_replica_holds_its_apply(
    replicated, receiver_with
):
    """A real worker (the service's own start, a subprocess) with REDIS_MIN_REPLICA_ACKS=1:
    while the replica is frozen the applied state is on the master only, and the task
    retries instead of returning (Celery acknowledges on return: acks_late); thawed, the
    retry finds the delivery finished, the replica confirms, the task is done. The
    delivery is applied once."""
    receiver = receiver_with(redis_url=replicated.master.url, REDIS_MIN_REPLICA_ACKS=1)
    prediction = f"pred-{uuid.uuid4().hex[:8]}"
    job_id, body, headers = a_delivery(prediction)
    receiver.register(job_id, "replicate", prediction)
    assert post(receiver, job_id, body, headers).status_code == 202
    replicated.freeze()

    system = System(replicated.master, extra_env={"REDIS_MIN_REPLICA_ACKS": "1"})
    try:
        system.start_worker(concurrency=1)
        retried = "not yet on enough replicas, retrying"
        wait_for(lambda: system.log("worker").count(retried) >= 2, timeout=30)

        state = replicated.on_master.hgetall(keys.job_state(job_id))
        assert state.get("status"), state  # applied on the master
        # not acknowledged: the task is still the broker's (a retry waiting its countdown
        # in `unacked`, or queued)
        assert queued_in(replicated.on_master) + replicated.on_master.hlen("unacked") >= 1
        assert "replica acknowledgement short: 0 of 1" in system.log("worker")

        replicated.thaw()
        wait_for(
            lambda: "delivery duplicate: already finished" in system.log("worker"),
            timeout=15,
            message=system.log("worker")[-2000:],
        )
        wait_for(
            lambda: queued_in(replicated.on_master) + replicated.on_master.hlen("unacked") == 0,
            timeout=10,
        )
    finally:
        system.stop_all()
        shutil.rmtree(system.logs, ignore_errors=True)

    events = [e["outcome"] for e in receiver.services.state.events(job_id)]
    assert events.count("applied") == 1, events
    wait_for(lambda: replicated.on_replica.hgetall(keys.job_state(job_id)) == state, timeout=5)


def check_config(**environ: str) -> str:
    from click.testing import CliRunner

    from webhook_ingest.operations.cli import main

    run = CliRunner().invoke(main, ["check-config"], env=environ, catch_exceptions=False)
    return run.output


def test_check_config_shows_the_setting_and_warns_of_too_few_replicas(replicated):
    master = replicated.master.url

    assert "replica acknowledgement: off" in check_config(
        REDIS_URL=master, CELERY_BROKER_URL=master
    )
    one = check_config(REDIS_URL=master, CELERY_BROKER_URL=master, REDIS_MIN_REPLICA_ACKS="1")
    assert "replica acknowledgement: WAIT for 1 replica, at most 200 ms" in one, one
    assert "WARNING REDIS_MIN_REPLICA_ACKS" not in one, one
    two = check_config(REDIS_URL=master, CELERY_BROKER_URL=master, REDIS_MIN_REPLICA_ACKS="2")
    assert (
        "WARNING REDIS_MIN_REPLICA_ACKS=2 but the state Redis has 1 replica online: "
        "every delivery would be answered 503"
    ) in two, two

"""The fault harness itself, on a stream with no fault: every delivery acknowledged
and applied once, on each broker. The baseline the fault tests are read against."""

from __future__ import annotations

import subprocess

import pytest

from tests.faults.fault_harness import (
    BROKERS,
    Ledger,
    Stream,
    count,
    new_jobs,
    one_delivery_each,
    register_jobs,
    report,
)
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


@pytest.mark.parametrize("broker", BROKERS)
def test_a_stream_without_faults_is_applied_once_each(store, system, broker):
    system.start_web()
    system.start_worker()
    jobs = new_jobs(60, "smoke")
    register_jobs(store, jobs)
    deliveries = one_delivery_each(jobs)
    Stream(system, deliveries, rate=60).start().join()
    counts = count(Ledger(store), deliveries, timeout=60)

    report(f"no fault ({broker})", counts)
    assert counts.acknowledged == counts.sent == 60
    assert counts.lost == 0 and counts.duplicated == 0


@pytest.mark.parametrize("broker", ["amqp"])
def test_on_rabbitmq_the_task_queue_is_a_durable_quorum_queue(system):
    """Broker durability across machines (docs/operations.md): the queue the receiver
    publishes to and the worker consumes from, as RabbitMQ itself reports it."""
    system.start_web()
    system.start_worker()
    system.wait_worker_ready()
    listed = subprocess.run(
        ["rabbitmqctl", "list_queues", "-p", system.vhost, "--no-table-headers", "-s"]
        + ["name", "type", "durable"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout

    queues = {line.split()[0]: line.split()[1:] for line in listed.splitlines() if line.strip()}
    assert queues.get(system.queue) == ["quorum", "true"], queues


@pytest.mark.parametrize("broker", ["amqp"])
@pytest.mark.system_env(UNMATCHED_RETRY_SECONDS="60")
def test_on_rabbitmq_a_retry_countdown_comes_back_through_native_delayed_delivery(store, system):
    """A delivery that arrives before its job is registered is retried with a
    countdown; on quorum queues Celery sends it through RabbitMQ's delayed-delivery
    exchanges, and it must come back and apply once the job is known."""
    system.start_web()
    system.start_worker()
    jobs = new_jobs(3, "late")
    deliveries = one_delivery_each(jobs)
    Stream(system, deliveries, rate=10).start().join()
    wait_for(
        lambda: "job not registered yet, retrying" in system.log("worker"),
        timeout=30,
        message="the first retry",
    )
    register_jobs(store, jobs)
    counts = count(Ledger(store), deliveries, timeout=60)

    report("retry countdown (amqp, quorum)", counts)
    assert counts.acknowledged == counts.applied == 3
    assert counts.lost == 0 and counts.duplicated == 0

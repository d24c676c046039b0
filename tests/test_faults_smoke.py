"""The fault harness itself, on a stream with no fault: every delivery acknowledged
and applied once, on each broker. The baseline the fault tests are read against."""

from __future__ import annotations

import pytest

from tests.fault_harness import (
    FaultRedis,
    Ledger,
    Stream,
    System,
    count,
    new_jobs,
    one_delivery_each,
    register_jobs,
    report,
)

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_a_stream_without_faults_is_applied_once_each(broker):
    store = FaultRedis().start()
    system = System(store, broker)
    try:
        system.start_web()
        system.start_worker()
        jobs = new_jobs(60, "smoke")
        register_jobs(store, jobs)
        deliveries = one_delivery_each(jobs)
        Stream(system, deliveries, rate=60).start().join()
        counts = count(Ledger(store), deliveries, timeout=60)
    finally:
        system.stop_all()
        store.cleanup()
    report(f"no fault ({broker})", counts)
    assert counts.acknowledged == counts.sent == 60
    assert counts.lost == 0 and counts.duplicated == 0

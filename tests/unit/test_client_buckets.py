"""The in-process per-client token buckets behind UNVERIFIED_RATE_LIMIT and
ADMIN_FAILURE_LIMIT (webhook_ingest.web.client_buckets), on a clock the test moves."""

from __future__ import annotations

import pytest

from webhook_ingest.web.client_buckets import ClientBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def test_a_full_bucket_holds_the_rate_then_refuses_with_the_seconds_to_wait(clock):
    buckets = ClientBuckets("3/minute", clock=clock)

    assert [buckets.spend("a") for _ in range(3)] == [0, 0, 0]
    assert buckets.spend("a") == 20  # one token every 20 s
    clock.now += 5
    assert buckets.spend("a") == 15
    assert buckets.wait("a") == 15


def test_a_refused_request_takes_nothing_so_waiting_is_enough(clock):
    buckets = ClientBuckets("1/second", clock=clock)
    buckets.spend("a")
    for _ in range(100):
        assert buckets.spend("a") == 1
    clock.now += 1

    assert buckets.spend("a") == 0


def test_the_bucket_refills_up_to_its_capacity_and_no_more(clock):
    buckets = ClientBuckets("2/second", clock=clock)
    buckets.spend("a")
    buckets.spend("a")
    clock.now += 3600

    assert [buckets.spend("a") for _ in range(3)] == [0, 0, 1]


def test_clients_have_buckets_of_their_own(clock):
    buckets = ClientBuckets("1/minute", clock=clock)
    buckets.spend("192.0.2.1")

    assert buckets.spend("192.0.2.1") == 60
    assert buckets.spend("192.0.2.2") == 0
    assert buckets.spend("2001:db8::1") == 0


def test_wait_spends_nothing(clock):
    buckets = ClientBuckets("1/minute", clock=clock)

    assert [buckets.wait("a") for _ in range(5)] == [0] * 5
    assert buckets.spend("a") == 0


def test_the_map_is_bounded_and_forgets_the_least_recently_seen_first(clock):
    """A sender spread over many addresses cannot grow the process's memory; a
    forgotten client starts again with a full bucket."""
    buckets = ClientBuckets("1/hour", max_clients=3, clock=clock)
    for client in ("a", "b", "c"):
        buckets.spend(client)
    buckets.spend("a")  # a is the most recently seen now
    buckets.spend("d")  # b goes

    assert len(buckets._tokens) == 3
    assert buckets.spend("a") > 0 and buckets.spend("c") > 0
    assert buckets.spend("b") == 0

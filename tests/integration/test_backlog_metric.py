"""The backlog on GET /metrics (issue 17, item 5): webhook_queue_length per broker queue,
read at scrape time, after real traffic through the real receiver (gunicorn) onto a
real Redis broker that no worker consumes, so what waits there is a real backlog.
A broker that does not answer never fails the scrape. And the counters the alert
rules watch with increase() exist at 0 from a process's start, so their first
event is seen."""

from __future__ import annotations

import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_TOKEN, REPLICATE_SECRET
from tests.integration.test_end_to_end import Service
from tests.support import (
    QUEUE,
    UNMATCHED_QUEUE,
    PrivateRedis,
    body_of,
    celery_for,
    client_for,
    free_port,
    signed_headers,
    wait_for,
)


def samples(text: str) -> dict[str, dict[tuple, float]]:
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


@pytest.fixture
def private_redis():
    server = PrivateRedis().start()
    yield server
    server.cleanup()


@pytest.fixture
def receiver_only(private_redis, fake_api):
    """gunicorn on a private Redis (state and broker), and no worker at all."""
    svc = Service(private_redis.url, {})
    svc.start_web()
    yield svc
    svc.stop()


def deliver(service, job_id: str, payload: dict) -> int:
    body = body_of(payload)
    answer = requests.post(
        f"{service.url}/webhook/replicate/{job_id}",
        data=body,
        headers=signed_headers(REPLICATE_SECRET, body),
        timeout=5,
    )
    return answer.status_code


@pytest.mark.e2e
def test_the_backlog_of_each_queue_is_exported_after_real_traffic(receiver_only):
    svc = receiver_only
    for i in range(7):  # jobs the job system registered: the main queue
        answer = requests.post(
            f"{svc.url}/jobs",
            json={"job_id": f"job-b{i}", "provider": "replicate", "external_job_id": f"p{i}"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=5,
        )
        assert answer.status_code == 201, answer.text
        assert deliver(svc, f"job-b{i}", {"id": f"p{i}", "status": "processing"}) == 202
    for i in range(3):  # no mapping yet: the receiver queues them on the unmatched queue
        assert deliver(svc, f"job-u{i}", {"id": f"u{i}", "status": "processing"}) == 202

    # Two gunicorn workers: each scrape, whichever answers, reads the broker itself.
    for _ in range(4):
        scraped = samples(requests.get(f"{svc.url}/metrics", timeout=5).text)
        assert scraped["webhook_broker_up"][()] == 1
        assert scraped["webhook_queue_length"] == {
            (("queue", QUEUE),): 7,
            (("queue", UNMATCHED_QUEUE),): 3,
        }
        assert scraped["webhook_journal_depth"][()] == 10


def test_a_broker_that_does_not_answer_never_fails_the_scrape(services):
    down = celery_for(f"redis://127.0.0.1:{free_port()}/0")
    client = client_for(services, down)

    started = time.monotonic()
    answer = client.get("/metrics")

    assert answer.status_code == 200
    assert time.monotonic() - started < 5
    scraped = samples(answer.get_data(as_text=True))
    assert scraped["webhook_broker_up"][()] == 0
    # no length at all rather than a 0 that would read as "no backlog"
    assert "webhook_queue_length" not in scraped
    assert scraped["webhook_redis_up"][()] == 1  # the Redis gauges still come through
    down.close()


@pytest.mark.e2e
def test_the_alerted_receiver_counters_start_at_zero(receiver_only):
    scraped = samples(requests.get(f"{receiver_only.url}/metrics", timeout=5).text)
    received = scraped["webhook_deliveries_received_total"]
    for provider in ("replicate", "openai"):
        for outcome in ("rate_limited", "unverified_rate_limited", "state_unavailable"):
            assert received[(("outcome", outcome), ("provider", provider))] == 0


@pytest.mark.e2e
def test_the_alerted_worker_counters_start_at_zero(private_redis, fake_api):
    port = free_port()
    svc = Service(private_redis.url, {"WORKER_METRICS_PORT": str(port)})
    svc.start_worker()
    try:

        def scrape() -> dict | None:
            try:
                return samples(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text)
            except requests.RequestException:
                return None

        wait_for(lambda: scrape() is not None, timeout=30, message=f"worker metrics ({svc.logs})")
        scraped = scrape()
        for name in ("webhook_orphans_given_up_total", "webhook_dead_letters_dropped_total"):
            assert scraped[name][(("provider", "replicate"),)] == 0, name
    finally:
        svc.stop()

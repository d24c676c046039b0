"""Each metric family moves with real traffic: deliveries through the receiver, a real
in-process worker, the orphan poller against the stand-in provider API, and /metrics
serving it all in the Prometheus text format."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPLICATE_SECRET
from tests.support import body_of, client_for, signed_headers, wait_for
from webhook_ingest.state import keys


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Counts a sample before and after: the registry lives for the whole test session."""

    def __init__(self, name: str, **labels: str) -> None:
        self.name, self.labels = name, labels
        self.start = value(name, **labels)

    def __call__(self) -> float:
        return value(self.name, **self.labels) - self.start


def scrape(client) -> dict[str, dict[tuple, float]]:
    """GET /metrics, parsed: {sample name: {sorted label items: value}}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def post(client, path: str, body: str, headers: dict[str, str] | None = None):
    return client.post(path, data=body, headers=headers or {})


def signed_post(client, job_id: str, payload: dict | str, msg_id: str | None = None):
    body = payload if isinstance(payload, str) else body_of(payload)
    return post(
        client, f"/webhook/replicate/{job_id}", body, signed_headers(REPLICATE_SECRET, body, msg_id)
    )


@pytest.fixture
def receiver(services, quiet_broker):
    """The receiver publishing to a broker no worker reads: only the receiver counts."""
    return client_for(services, quiet_broker)


# -- receiver ---------------------------------------------------------------------


def test_each_answer_is_counted_by_provider_and_outcome(receiver, job_id):
    counted = {
        outcome: Delta("webhook_deliveries_received_total", provider=provider, outcome=outcome)
        for provider, outcome in [
            ("replicate", "accepted"),
            ("replicate", "duplicate"),
            ("replicate", "verification_failed"),
            ("replicate", "invalid_json"),
            ("replicate", "too_large"),
            ("replicate", "invalid_job_id"),
            ("unknown", "unknown_provider"),
        ]
    }
    bad_signature = Delta(
        "webhook_verification_failures_total", provider="replicate", reason="no matching signature"
    )
    missing_headers = Delta(
        "webhook_verification_failures_total",
        provider="replicate",
        reason="missing signature headers",
    )
    enqueued = Delta("webhook_enqueue_seconds_count", provider="replicate")

    payload = {"id": "pred-1", "status": "processing"}
    assert signed_post(receiver, job_id, payload, msg_id="msg_m1").status_code == 202
    assert signed_post(receiver, job_id, payload, msg_id="msg_m1").status_code == 200
    forged = signed_headers("whsec_" + "A" * 44, body_of(payload))
    assert post(receiver, f"/webhook/replicate/{job_id}", body_of(payload), forged).status_code
    assert post(receiver, f"/webhook/replicate/{job_id}", body_of(payload)).status_code == 401
    assert signed_post(receiver, job_id, "not json").status_code == 400
    assert signed_post(receiver, job_id, "x" * 70_000).status_code == 413
    assert signed_post(receiver, "bad id!", payload).status_code in (400, 404)
    assert post(receiver, "/webhook/nosuch/job-1", "{}").status_code == 404

    assert counted["accepted"]() == 1
    assert counted["duplicate"]() == 1
    assert counted["verification_failed"]() == 2
    assert bad_signature() == 1
    assert missing_headers() == 1
    assert counted["invalid_json"]() == 1
    assert counted["too_large"]() == 1
    assert counted["unknown_provider"]() == 1
    assert enqueued() == 1  # only what reached the broker is timed


def test_an_unknown_provider_name_never_becomes_a_label(receiver):
    for name in ("a1", "b2", "c3"):
        assert post(receiver, f"/webhook/{name}/job-1", "{}").status_code == 404

    providers = {
        dict(labels).get("provider")
        for labels in scrape(receiver).get("webhook_deliveries_received_total", {})
    }
    assert not providers & {"a1", "b2", "c3"}
    assert "unknown" in providers


def test_a_rate_limited_delivery_is_counted(services_with, quiet_broker, job_id):
    limited = services_with(RATE_LIMIT="2/minute")
    client = client_for(limited, quiet_broker)
    refused = Delta(
        "webhook_deliveries_received_total", provider="replicate", outcome="rate_limited"
    )

    answers = [
        signed_post(client, job_id, {"id": "p", "status": "starting"}).status_code for _ in range(4)
    ]

    assert answers.count(429) == 2
    assert refused() == 2


def test_a_broker_outage_is_counted_as_queue_unavailable(services, job_id):
    from tests.support import celery_for, free_port

    unreachable = celery_for(f"redis://127.0.0.1:{free_port()}/0")
    client = client_for(services, unreachable)
    refused = Delta(
        "webhook_deliveries_received_total", provider="replicate", outcome="queue_unavailable"
    )

    answer = signed_post(client, job_id, {"id": "p", "status": "starting"})

    assert answer.status_code == 503
    assert refused() == 1
    unreachable.close()


# -- worker -----------------------------------------------------------------------


def test_applied_deliveries_are_counted_with_their_latency(
    client, services, worker, redis_client, job_id
):
    services.jobs.register(job_id, "replicate", "pred-lat")
    applied = Delta("webhook_deliveries_processed_total", provider="replicate", outcome="applied")
    latency = Delta("webhook_receive_to_applied_seconds_count", provider="replicate")

    signed_post(client, job_id, {"id": "pred-lat", "status": "processing"})
    signed_post(client, job_id, {"id": "pred-lat", "status": "succeeded", "output": "x"})

    wait_for(lambda: applied() == 2, message="two applied deliveries counted")
    assert latency() == 2
    assert redis_client.hget(keys.job_state(job_id), "status") == "completed"


def test_an_unmatched_delivery_is_counted_then_parked_and_the_depth_shows(
    client, worker, redis_client, job_id
):
    unmatched = Delta("webhook_unmatched_deliveries_total", provider="replicate")
    parked = Delta("webhook_dead_letters_total", provider="replicate", reason="unmatched")

    signed_post(client, job_id, {"id": "pred-nobody", "status": "processing"})

    # UNMATCHED_RETRY_SECONDS is 4 in the tests
    wait_for(lambda: parked() == 1, timeout=30, message="the delivery to be parked")
    assert unmatched() >= 2  # the first attempt and at least one retry found no job
    assert scrape(client)["webhook_dead_letter_depth"][()] == 1


# -- orphans and provider APIs ----------------------------------------------------------


def test_orphan_detection_polls_and_provider_errors_are_counted(
    client, services, worker, redis_client, api, job_id
):
    from workers.tasks import poll_job, poll_orphans

    services.jobs.register(job_id, "replicate", "pred-orphan")
    redis_client.zadd(keys.live_jobs("replicate"), {job_id: 0})  # not heard of since 1970
    detected = Delta("webhook_orphans_detected_total", provider="replicate")
    backing_off = Delta("webhook_orphan_polls_total", provider="replicate", outcome="backing_off")
    recovered = Delta("webhook_orphan_polls_total", provider="replicate", outcome="applied")
    errors = Delta("webhook_provider_api_errors_total", provider="replicate", status="503")
    api.respond("GET", "/v1/predictions/pred-orphan", (503, {"detail": "busy"}))
    assert scrape(client)["webhook_tracked_jobs"][(("provider", "replicate"),)] == 1

    poll_orphans.delay()  # beat's tick; the worker runs it and the poll it queues

    wait_for(lambda: backing_off() == 1, message="the failed poll to be counted")
    assert detected() == 1
    assert errors() >= 1

    api.respond(
        "GET",
        "/v1/predictions/pred-orphan",
        (200, {"id": "pred-orphan", "status": "succeeded", "output": "done"}),
    )
    poll_job.delay("replicate", job_id)

    wait_for(lambda: recovered() == 1, message="the recovering poll to be counted")
    assert redis_client.hget(keys.job_state(job_id), "status") == "completed"
    assert scrape(client)["webhook_tracked_jobs"][(("provider", "replicate"),)] == 0


# -- the endpoint -------------------------------------------------------------------


def test_metrics_is_open_to_the_scraper_and_says_whether_redis_answered(client):
    samples = scrape(client)  # no Authorization header: Prometheus scrapes it as is

    assert samples["webhook_redis_up"][()] == 1
    assert samples["webhook_dead_letter_depth"][()] == 0


def test_metrics_still_answers_when_redis_is_down(services_with, quiet_broker, own_redis):
    down = services_with(REDIS_URL=own_redis.url)
    client = client_for(down, quiet_broker)
    own_redis.stop()

    samples = scrape(client)

    assert samples["webhook_redis_up"][()] == 0
    assert "webhook_dead_letter_depth" not in samples

"""What operators see of a job: its recent events, `GET /jobs/<id>`, `jobs show` (issue 5).

Every observation offered to job_state — a webhook delivery or an orphan poll —
leaves an event in `webhook_ingest:job_events:{job_id}` (newest first, the last
20, expiring with the delivery dedup TTL) saying what became of it: applied,
unchanged, terminal (the job had finished) or duplicate (a redelivered task).
`GET /jobs/<id>` (behind ADMIN_TOKEN) and `webhook-ingest jobs show <id>` show the
mapping, the state and the newest ten events.

Deliveries go through the receiver and the real in-process worker, as a provider's
would; a redelivered task is the receiver's own message sent to the broker again.
"""

from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY

from tests.conftest import REPLICATE_SECRET
from tests.support import body_of, signed_headers, wait_for
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.handoff.publish import enqueue
from webhook_ingest.operations.cli import main
from webhook_ingest.operations.orphan_poller import OrphanPoller, PollOutcome
from webhook_ingest.state import keys
from webhook_ingest.state.job_update import JobStateUpdate

EVENTS_KEPT = 20
EVENTS_SHOWN = 10
DEDUP_TTL = 73 * 3600  # DELIVERY_DEDUP_TTL_SECONDS' default


def tqdm(percent: int) -> str:
    return f"{percent:3d}%|{'#' * (percent // 10):<10}| {percent}/100 [00:01<00:01]\n"


class Replicate:
    """Sends signed prediction webhooks for one job and waits until the worker has
    offered each to job_state (its event is there)."""

    def __init__(self, client, redis_client, job_id: str, prediction_id: str) -> None:
        self.client = client
        self.redis = redis_client
        self.job_id = job_id
        self.prediction_id = prediction_id
        self.sent: list[Delivery] = []

    def events(self) -> list[dict]:
        return [json.loads(e) for e in self.redis.lrange(keys.job_events(self.job_id), 0, -1)]

    def deliver(self, status: str, **fields) -> str:
        body = body_of({"id": self.prediction_id, "status": status, **fields})
        headers = signed_headers(REPLICATE_SECRET, body)
        before = len(self.events())
        response = self.client.post(f"/webhook/replicate/{self.job_id}", data=body, headers=headers)
        assert response.status_code == 202, response.get_json()
        self.sent.append(
            Delivery(
                provider="replicate",
                delivery_id=headers["webhook-id"],
                body=body,
                job_id=self.job_id,
                headers={"webhook-id": headers["webhook-id"]},
                journaled=True,  # as the receiver sent it: with its journal record
            )
        )
        self.wait_for_event(before)
        return headers["webhook-id"]

    def send_as_before_the_journal(self, celery_app, status: str, **fields) -> Delivery:
        """A message as versions before the journal sent it: no record, so only the
        job's applied set tells a second copy from a new delivery."""
        body = body_of({"id": self.prediction_id, "status": status, **fields})
        delivery = Delivery("replicate", f"msg_{uuid.uuid4().hex}", body, job_id=self.job_id)
        self.redeliver(celery_app, delivery)
        return delivery

    def redeliver(self, celery_app, delivery: Delivery) -> None:
        """The broker handing a worker the same task again (e.g. after a worker crash)."""
        before = len(self.events())
        enqueue(celery_app, delivery)
        self.wait_for_event(before)

    def wait_for_event(self, before: int) -> None:
        wait_for(lambda: len(self.events()) > before, message="the observation's event")


@pytest.fixture
def replicate(client, services, redis_client, job_id):
    prediction_id = f"pred-{uuid.uuid4().hex[:10]}"
    services.jobs.register(job_id, "replicate", prediction_id)
    return Replicate(client, redis_client, job_id, prediction_id)


def state_updates(source: str, status: str, outcome: str) -> float:
    labels = {"source": source, "status": status, "outcome": outcome}
    return REGISTRY.get_sample_value("webhook_state_updates_total", labels) or 0.0


# -- events ------------------------------------------------------------------------------


def test_each_observation_leaves_an_event_saying_what_became_of_it(
    replicate, worker, celery_app, redis_client, job_id
):
    started = replicate.deliver("starting")
    forty = replicate.deliver("processing", logs=tqdm(10) + tqdm(40))
    again = replicate.deliver("processing", logs=tqdm(40))  # nothing new
    replicate.redeliver(celery_app, replicate.sent[1])  # the 40 % task, a second time
    done = replicate.deliver("succeeded", output=["https://replicate.delivery/x.png"])
    late = replicate.deliver("processing", logs=tqdm(70))  # throttled, after the end

    events = replicate.events()

    observed = [(e["delivery_id"], e["status"], e["progress"], e["outcome"]) for e in events]
    assert observed == [
        (late, "processing", 70, "terminal"),
        (done, "completed", 100, "applied"),
        # its record was gone: dropped unread, so what it said is not known
        (forty, None, None, "duplicate"),
        (again, "processing", 40, "unchanged"),
        (forty, "processing", 40, "applied"),
        (started, "processing", 0, "applied"),
    ]
    assert {e["source"] for e in events} == {"webhook"}
    times = [e["at"] for e in events]
    assert all(isinstance(t, int) for t in times), times
    assert times == sorted(times, reverse=True), "newest first"
    # the decisions were the real ones: the state is the completed one
    state = redis_client.hgetall(keys.job_state(job_id))
    assert (state["status"], state["progress"]) == ("completed", "100")


def test_offered_updates_are_counted_by_source_status_and_outcome(replicate, worker, celery_app):
    applied = state_updates("webhook", "processing", "applied")
    duplicate = state_updates("webhook", "processing", "duplicate")
    terminal = state_updates("webhook", "processing", "terminal")
    completed = state_updates("webhook", "completed", "applied")

    # a duplicate offered to job_state: an older version's message, twice (a journaled
    # delivery's copy is dropped before it is offered: test_journal.py)
    old = replicate.send_as_before_the_journal(celery_app, "processing", logs=tqdm(30))
    replicate.redeliver(celery_app, old)
    replicate.deliver("succeeded", output="done")
    replicate.deliver("processing", logs=tqdm(50))

    assert state_updates("webhook", "processing", "applied") == applied + 1
    assert state_updates("webhook", "processing", "duplicate") == duplicate + 1
    assert state_updates("webhook", "completed", "applied") == completed + 1
    assert state_updates("webhook", "processing", "terminal") == terminal + 1


def test_an_orphan_poll_leaves_an_event_without_a_delivery_id(
    replicate, worker, services, api, job_id
):
    replicate.deliver("processing", logs=tqdm(20))
    api.respond(
        "GET",
        f"/v1/predictions/{replicate.prediction_id}",
        (200, {"id": replicate.prediction_id, "status": "succeeded", "output": ["out.png"]}),
    )

    assert OrphanPoller(services).poll("replicate", job_id) is PollOutcome.APPLIED

    newest = replicate.events()[0]
    assert newest["source"] == "orphan_poll"
    assert newest["delivery_id"] is None
    assert (newest["status"], newest["outcome"]) == ("completed", "applied")


def test_events_are_capped_and_expire_with_the_dedup_ttl(services, redis_client, job_id):
    for n in range(EVENTS_KEPT + 5):
        update = JobStateUpdate(
            job_id=job_id,
            status="processing",
            progress=n,
            provider="replicate",
            source="webhook",
            external_job_id="pred-cap",
        )
        services.state.apply(update, delivery_id=f"msg_{n:03d}")

    events = [json.loads(e) for e in redis_client.lrange(keys.job_events(job_id), 0, -1)]

    assert len(events) == EVENTS_KEPT
    expected = [f"msg_{n:03d}" for n in reversed(range(5, EVENTS_KEPT + 5))]
    assert [e["delivery_id"] for e in events] == expected, "the newest 20, newest first"
    ttl = redis_client.ttl(keys.job_events(job_id))
    assert 0 < ttl <= DEDUP_TTL, ttl
    assert ttl > DEDUP_TTL - 60


def test_a_duplicate_leaves_an_event_and_nothing_else(services, redis_client, job_id):
    update = JobStateUpdate(
        job_id=job_id, status="processing", progress=10, provider="replicate", source="webhook"
    )
    services.state.apply(update, delivery_id="msg_once")
    state = redis_client.hgetall(keys.job_state(job_id))

    services.state.apply(JobStateUpdate(**{**update.to_dict(), "progress": 90}), "msg_once")

    assert redis_client.hgetall(keys.job_state(job_id)) == state
    outcomes = [e["outcome"] for e in services.state.events(job_id)]
    assert outcomes == ["duplicate", "applied"]


# -- GET /jobs/<job_id> -------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-wrong-token"}],
    ids=["no-token", "wrong-token"],
)
def test_get_job_without_the_admin_token_is_401_and_shows_no_events(
    client, replicate, worker, headers
):
    replicate.deliver("starting")

    response = client.get(f"/jobs/{replicate.job_id}", headers=headers)

    assert response.status_code == 401
    text = response.get_data(as_text=True)
    assert "events" not in text
    assert replicate.prediction_id not in text


def test_get_job_shows_mapping_state_and_the_newest_events(
    client, replicate, worker, admin_headers, job_id
):
    for percent in range(5, 65, 5):  # twelve progress webhooks ...
        replicate.deliver("processing", logs=tqdm(percent))
    last = replicate.deliver("succeeded", output=["https://replicate.delivery/y.png"])

    response = client.get(f"/jobs/{job_id}", headers=admin_headers)

    assert response.status_code == 200
    view = response.get_json()
    assert view["job_id"] == job_id
    assert view["mapping"]["provider"] == "replicate"
    assert view["mapping"]["external_job_id"] == replicate.prediction_id
    assert view["state"]["status"] == "completed"
    assert view["state"]["progress"] == "100"
    assert view["state"]["source"] == "webhook"
    # ... and the result: only the newest ten are shown, newest first
    events = view["events"]
    assert len(events) == EVENTS_SHOWN
    assert events[0]["delivery_id"] == last
    assert (events[0]["status"], events[0]["outcome"]) == ("completed", "applied")
    assert [e["progress"] for e in events[1:]] == list(range(60, 15, -5))
    assert set(events[0]) == {
        "at",
        "source",
        "delivery_id",
        "status",
        "provider_status",
        "progress",
        "outcome",
    }


def test_get_unknown_job_is_404_json(client, admin_headers, job_id):
    response = client.get(f"/jobs/{job_id}", headers=admin_headers)

    assert response.status_code == 404
    assert response.is_json
    assert response.get_json()["error"]


# -- webhook-ingest jobs show ----------------------------------------------------------------


def test_jobs_show_prints_what_get_jobs_answers(client, replicate, worker, admin_headers):
    replicate.deliver("starting")
    replicate.deliver("processing", logs=tqdm(55))

    result = CliRunner().invoke(main, ["jobs", "show", replicate.job_id])

    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed == client.get(f"/jobs/{replicate.job_id}", headers=admin_headers).get_json()
    assert [e["progress"] for e in printed["events"]] == [55, 0]
    assert result.output.startswith('{\n  "job_id"'), "indented by two"


def test_jobs_show_of_an_unknown_job_fails_with_a_message(redis_client, job_id):
    result = CliRunner().invoke(main, ["jobs", "show", job_id])

    assert result.exit_code != 0
    assert f"unknown job {job_id}" in result.output

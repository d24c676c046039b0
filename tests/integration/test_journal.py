"""The delivery journal (README "Reliability"): what a 2xx rests on.

A delivery the receiver acknowledged is journaled with its claim, in the same
atomic step, on both hand-offs; the worker finishes the record with the
delivery's outcome (applied, duplicate, ignored, parked), pushes it forward when
it schedules a retry, and beat's redrive publishes again whatever is overdue.
Through the real receiver, a real worker and the real Redis.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import OPENAI_SECRET, REPLICATE_SECRET
from tests.support import body_of, client_for, seen_buckets, signed_headers, wait_for
from webhook_ingest.clock import now_ms
from webhook_ingest.handoff import JournalThenPublishHandoff
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.handoff.publish import enqueue
from webhook_ingest.state import keys


def send(client, job_id: str, payload: dict, secret: str = REPLICATE_SECRET, provider="replicate"):
    body = body_of(payload)
    headers = signed_headers(secret, body)
    path = f"/webhook/{provider}/{job_id}" if job_id else f"/webhook/{provider}"
    response = client.post(path, data=body, headers=headers)
    member = Delivery(provider, headers["webhook-id"], body, job_id=job_id).journal_member
    return response, member


def delivery_id_of(member: str) -> str:
    """`{provider}/{job}/{id}` for per-job URLs, `{provider}:{id}` for project URLs."""
    return member.rsplit("/", 1)[1] if "/" in member else member.split(":", 1)[1]


def record(redis_client, member: str) -> dict | None:
    message = redis_client.hget(keys.JOURNAL_MESSAGES, member)
    return json.loads(message) if message else None


def finished(redis_client, member: str) -> bool:
    return (
        record(redis_client, member) is None and redis_client.zscore(keys.JOURNAL, member) is None
    )


# -- the receiver journals what it acknowledges ---------------------------------------


@pytest.mark.parametrize("path", ["single_script", "journal_then_publish"])
def test_an_acknowledged_delivery_is_journaled_with_its_claim(
    services, quiet_broker, redis_client, job_id, path
):
    client = client_for(services, quiet_broker)  # nobody consumes: the record stays
    if path == "journal_then_publish":
        assert isinstance(client.application.extensions["handoff"], JournalThenPublishHandoff)
    else:
        from webhook_ingest.web.app import create_app

        app = create_app(services)  # the state's own server is the broker: one script
        app.testing = True
        client = app.test_client()
    before = now_ms()

    response, member = send(client, job_id, {"id": "pred-j", "status": "starting"})

    assert response.status_code == 202
    journaled = record(redis_client, member)
    assert journaled is not None
    assert journaled["journaled"] is True
    assert (journaled["provider"], journaled["job_id"]) == ("replicate", job_id)
    assert json.loads(journaled["body"]) == {"id": "pred-j", "status": "starting"}
    due = redis_client.zscore(keys.JOURNAL, member)
    redrive_after = services.settings.journal_redrive_after_seconds * 1000
    assert before + redrive_after <= due <= now_ms() + redrive_after
    delivery_id = delivery_id_of(member)
    assert seen_buckets(redis_client, "replicate", delivery_id, job_id)  # and remembered


def test_a_rejected_delivery_is_not_journaled(client, redis_client, job_id):
    body = body_of({"id": "pred-x", "status": "starting"})
    headers = signed_headers(REPLICATE_SECRET, body)
    headers["webhook-signature"] = "v1,AAAA"

    assert (
        client.post(f"/webhook/replicate/{job_id}", data=body, headers=headers).status_code == 401
    )
    assert redis_client.zcard(keys.JOURNAL) == 0


# -- the worker finishes it with the outcome ---------------------------------------------


def test_applying_a_delivery_finishes_its_record(client, services, worker, redis_client, job_id):
    services.jobs.register(job_id, "replicate", "pred-a")

    response, member = send(client, job_id, {"id": "pred-a", "status": "succeeded", "output": 1})

    assert response.status_code == 202
    wait_for(lambda: finished(redis_client, member), message="the record to be finished")
    assert redis_client.hget(keys.job_state(job_id), "status") == "completed"


def test_an_ignored_delivery_finishes_its_record(client, worker, redis_client):
    event = {
        "object": "event",
        "id": "evt_untracked",
        "type": "realtime.call.incoming",
        "created_at": int(time.time()),
        "data": {"call_id": "call_1"},
    }
    response, member = send(client, None, event, secret=OPENAI_SECRET, provider="openai")

    assert response.status_code == 202
    wait_for(lambda: finished(redis_client, member), message="the record to be finished")
    recorded = [json.loads(r) for r in redis_client.lrange(keys.IGNORED_DELIVERIES, 0, -1)]
    assert delivery_id_of(member) in [r["delivery_id"] for r in recorded]


def test_a_parked_delivery_finishes_its_record(client, services, worker, redis_client, job_id):
    services.jobs.register(job_id, "replicate", "pred-mine")

    # names another prediction than the job's: parked as JobMismatch
    response, member = send(client, job_id, {"id": "pred-other", "status": "succeeded"})

    assert response.status_code == 202
    wait_for(lambda: finished(redis_client, member), message="the record to be finished")
    [letter] = services.dead_letters.list()
    assert letter["delivery_id"] == delivery_id_of(member)


def test_a_retry_pushes_the_due_time_forward(client, services, worker, redis_client, job_id):
    # no mapping yet: the worker retries (UNMATCHED_RETRY_SECONDS is 4 in the tests)
    response, member = send(client, job_id, {"id": "pred-late", "status": "starting"})
    accepted_due = redis_client.zscore(keys.JOURNAL, member)
    assert response.status_code == 202

    wait_for(
        lambda: (redis_client.zscore(keys.JOURNAL, member) or 0) > accepted_due,
        message="the retry to postpone the record",
    )
    services.jobs.register(job_id, "replicate", "pred-late")
    wait_for(lambda: finished(redis_client, member), timeout=20, message="the record to finish")
    assert redis_client.hget(keys.job_state(job_id), "status") == "processing"


# -- beat's redrive --------------------------------------------------------------------------


def overdue(redis_client, member: str) -> None:
    """As if REDRIVE_AFTER had passed (the score is the due time)."""
    assert redis_client.zadd(keys.JOURNAL, {member: now_ms() - 1}, xx=True) == 0


def test_a_delivery_the_broker_lost_is_redriven_and_applied_once(
    services, quiet_broker, celery_app, worker, redis_client, job_id
):
    from workers.tasks import redrive_journal

    services.jobs.register(job_id, "replicate", "pred-lost")
    # acknowledged, then lost: published to a broker no worker will ever read
    lost_to = client_for(services, quiet_broker)
    response, member = send(lost_to, job_id, {"id": "pred-lost", "status": "succeeded"})
    assert response.status_code == 202
    assert redrive_journal.apply().get() == 0  # not overdue: nothing sent twice

    overdue(redis_client, member)
    assert redrive_journal.apply().get() == 1

    wait_for(lambda: finished(redis_client, member), message="the redriven delivery to finish")
    assert redis_client.hget(keys.job_state(job_id), "status") == "completed"
    # the record's removal said it was finished: nothing is kept per job for it
    assert not redis_client.exists(keys.applied_deliveries(job_id))
    # due again one period later, and finished meanwhile: nothing left to redrive
    assert redrive_journal.apply().get() == 0


def test_a_redriven_copy_of_a_finished_delivery_changes_nothing(
    client, services, celery_app, worker, redis_client, job_id
):
    services.jobs.register(job_id, "replicate", "pred-twice")
    response, member = send(client, job_id, {"id": "pred-twice", "status": "succeeded"})
    assert response.status_code == 202
    wait_for(lambda: finished(redis_client, member), message="the original to finish")
    events = redis_client.llen(keys.job_events(job_id))

    # the copy a redrive would have sent had it raced the original
    provider, delivery_id = "replicate", delivery_id_of(member)
    body = body_of({"id": "pred-twice", "status": "succeeded"})
    copy = Delivery(provider, delivery_id, body, job_id=job_id, journaled=True)
    marker = Delivery("replicate", "msg_after_the_copy", body, job_id=job_id)
    enqueue(celery_app, copy)
    enqueue(celery_app, marker)  # the solo worker takes them in order

    wait_for(
        lambda: redis_client.llen(keys.job_events(job_id)) > events,
        message="the marker delivery to be recorded",
    )
    state_before = redis_client.hgetall(keys.job_state(job_id))
    newest = [json.loads(e) for e in redis_client.lrange(keys.job_events(job_id), 0, -1)]
    # the copy was dropped unread (the journal said it was finished), and left a
    # trace saying it came: the operator sees a redelivery, not silence
    copy_event, marker_event = newest[1], newest[0]
    assert marker_event["delivery_id"] == "msg_after_the_copy"
    assert copy_event["delivery_id"] == delivery_id
    assert copy_event["outcome"] == "duplicate"
    assert copy_event["status"] is None and copy_event["progress"] is None
    assert len(newest) - events == 2
    # only the unjournaled marker (a message as versions before the journal sent
    # it) needed the job's applied set
    assert redis_client.smembers(keys.applied_deliveries(job_id)) == {"msg_after_the_copy"}
    assert redis_client.hgetall(keys.job_state(job_id)) == state_before
    assert services.dead_letters.count() == 0


# -- the apply script decides "finished" from the record ---------------------------------------


def _update(job_id: str, progress: int):
    from webhook_ingest.state.job_update import SOURCE_WEBHOOK, JobStateUpdate

    return JobStateUpdate(
        job_id=job_id,
        provider="replicate",
        status="processing",
        progress=progress,
        source=SOURCE_WEBHOOK,
        updated_at=now_ms(),
    )


def test_a_copy_whose_record_is_gone_is_a_duplicate_inside_the_apply_script(
    services, redis_client, job_id
):
    """Two copies that both passed the worker's `is_open` check (they ran at once):
    the script removes the record atomically with the apply, so only one applies,
    and no per-job set is needed to tell."""
    services.jobs.register(job_id, "replicate", "pred-race")
    delivery = Delivery("replicate", "msg_race", "{}", job_id=job_id, journaled=True)
    services.journal.open(delivery)
    member = delivery.journal_member

    first = services.state.apply(_update(job_id, 10), "msg_race", journal_member=member)
    state = redis_client.hgetall(keys.job_state(job_id))
    second = services.state.apply(_update(job_id, 20), "msg_race", journal_member=member)

    assert (first.outcome.value, second.outcome.value) == ("applied", "duplicate")
    assert redis_client.hgetall(keys.job_state(job_id)) == state
    assert services.state.events(job_id)[0]["outcome"] == "duplicate"
    assert not redis_client.exists(keys.applied_deliveries(job_id))
    assert finished(redis_client, member)


def test_an_unjournaled_delivery_is_still_deduplicated_by_the_jobs_applied_set(
    services, redis_client, job_id
):
    """Messages sent by versions before the journal carry no record: the job's
    applied set, kept DELIVERY_DEDUP_TTL_SECONDS, still makes a redelivery a no-op."""
    services.jobs.register(job_id, "replicate", "pred-old")

    first = services.state.apply(_update(job_id, 10), "msg_old")
    second = services.state.apply(_update(job_id, 20), "msg_old")

    assert (first.outcome.value, second.outcome.value) == ("applied", "duplicate")
    assert redis_client.hget(keys.job_state(job_id), "progress") == "10"
    applied = keys.applied_deliveries(job_id)
    assert redis_client.smembers(applied) == {"msg_old"}
    ttl = services.settings.dedup_ttl_seconds
    assert ttl - 60 <= redis_client.ttl(applied) <= ttl


def test_metrics_show_the_journal_depth_and_its_oldest_record(
    services, quiet_broker, redis_client, job_id
):
    client = client_for(services, quiet_broker)
    for n in range(3):
        response, _ = send(client, f"{job_id}-{n}", {"id": f"pred-{n}", "status": "starting"})
        assert response.status_code == 202
    time.sleep(1.1)

    scrape = client.get("/metrics").get_data(as_text=True)

    gauges = {
        line.split()[0]: float(line.split()[1])
        for line in scrape.splitlines()
        if line.startswith("webhook_journal_")
    }
    assert gauges["webhook_journal_depth"] == 3
    assert 1.0 <= gauges["webhook_journal_oldest_age_seconds"] < 60

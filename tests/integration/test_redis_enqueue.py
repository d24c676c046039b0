"""The receiver's one-call claim + enqueue when the broker shares the state's Redis server:
the message is the one kombu would have written, the worker applies it, and the claim
and the queue change together or not at all."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import replace

import pytest

from tests.conftest import REPLICATE_SECRET, TEST_BROKER_URL, TEST_REDIS_URL
from tests.support import (
    body_of,
    celery_for,
    client_for,
    seen_buckets,
    signed_headers,
    wait_for,
)
from webhook_ingest.handoff import JournalThenPublishHandoff, SingleScriptHandoff, build_handoff
from webhook_ingest.handoff.claims import PENDING, Claim
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.handoff.publish import enqueue
from webhook_ingest.handoff.seen import SeenDeliveries
from webhook_ingest.state import keys

# A queue no worker consumes: the session's worker reads the default one.
QUEUE = "direct_enqueue_tests"


@pytest.fixture
def broker():
    """A publishing app on the tests' broker database routing to QUEUE, and a reader."""
    import redis

    app = celery_for(TEST_BROKER_URL)
    app.conf.task_default_queue = QUEUE
    reader = redis.Redis.from_url(TEST_BROKER_URL, decode_responses=True)
    reader.delete(QUEUE)
    yield app, reader
    reader.delete(QUEUE)
    reader.close()
    app.close()


def delivery(n: int = 1) -> Delivery:
    return Delivery(
        provider="replicate",
        delivery_id=f"msg_direct_{n}",
        body=body_of({"id": f"p{n}", "status": "processing"}),
        job_id=f"job-direct-{n}",
        headers={"webhook-id": f"msg_direct_{n}"},
    )


def test_it_applies_only_when_the_broker_is_on_the_state_redis_server(broker):
    app, _ = broker
    assert SingleScriptHandoff.applies(app, TEST_REDIS_URL)  # other database, same server
    other_server = celery_for("redis://127.0.0.1:1/0")
    assert not SingleScriptHandoff.applies(other_server, TEST_REDIS_URL)
    rabbit = celery_for("amqp://guest:guest@127.0.0.1:5672//")
    assert not SingleScriptHandoff.applies(rabbit, TEST_REDIS_URL)


def test_the_message_is_the_one_kombu_writes_for_send_task(services, broker):
    app, reader = broker
    direct = SingleScriptHandoff(
        services.redis, app, TEST_REDIS_URL, SeenDeliveries({}, 60), services.journal
    )
    sample = delivery()

    enqueue(app, sample)  # through kombu
    by_kombu = json.loads(reader.rpop(QUEUE))
    ours = json.loads(direct.message(sample))

    def shape(value):
        if isinstance(value, dict):
            return {key: shape(item) for key, item in value.items()}
        return type(value).__name__

    assert shape(ours) == shape(by_kombu)
    varying = {"id", "root_id"}
    assert {k: v for k, v in ours["headers"].items() if k not in varying} == {
        k: v for k, v in by_kombu["headers"].items() if k not in varying
    }
    assert (
        ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"]
    )
    for name in ("delivery_mode", "delivery_info", "priority", "body_encoding", "reply_to"):
        assert ours["properties"][name] == by_kombu["properties"][name], name
    for name in ("content-type", "content-encoding"):
        assert ours[name] == by_kombu[name]

    def body(message):
        return json.loads(base64.b64decode(message["body"]))

    assert body(ours) == body(by_kombu)


def test_the_pushed_message_is_celerys_with_the_body_once_in_utf8(services, broker):
    """What the script pushes (the task's body joined around the journal record's
    bytes, the envelope from a template made once) is what kombu writes for
    send_task of the same journaled delivery: same fields, same task body, the
    ids fresh per message, and a non-ASCII body carried once as UTF-8."""
    app, reader = broker
    direct = SingleScriptHandoff(
        services.redis, app, TEST_REDIS_URL, SeenDeliveries({}, 60), services.journal
    )
    sample = Delivery(
        provider="replicate",
        delivery_id='msg_"quoted" é {braces}',  # shows in argsrepr, JSON-escaped
        body='{"id": "p-utf8", "status": "processing", "logs": "é ✓ {}"}',  # as sent
        job_id="job-direct-utf8",
        headers={"webhook-id": "msg_utf8"},
    )
    services.jobs.register(sample.job_id, "replicate", "p-utf8")  # for the main queue

    assert direct.accept(sample) is Claim.NEW
    assert direct.accept(replace(sample, delivery_id="msg_second")) is Claim.NEW
    pushed = [reader.rpop(QUEUE) for _ in range(2)]
    enqueue(app, replace(sample, journaled=True))  # through kombu
    by_kombu = json.loads(reader.rpop(QUEUE))
    ours = json.loads(pushed[0])

    varying = {"id", "root_id"}
    assert {k: v for k, v in ours["headers"].items() if k not in varying} == {
        k: v for k, v in by_kombu["headers"].items() if k not in varying
    }
    assert ours["properties"].keys() == by_kombu["properties"].keys()
    for name in ("delivery_mode", "delivery_info", "priority", "body_encoding", "argsrepr"):
        assert ours["properties"][name] == by_kombu["properties"][name], name
    body = base64.b64decode(ours["body"])
    assert json.loads(body) == json.loads(base64.b64decode(by_kombu["body"]))
    assert "é ✓".encode() in body and b"\\u00e9" not in body  # UTF-8, not escaped
    second = json.loads(pushed[1])
    ids = [(m["headers"]["id"], m["properties"]["delivery_tag"]) for m in (ours, second)]
    assert len({*ids[0], *ids[1]}) == 4  # task ids and delivery tags: all distinct
    for task_id, tag in ids:
        assert uuid.UUID(task_id).version == uuid.UUID(tag).version == 4
    assert ours["headers"]["root_id"] == ours["properties"]["correlation_id"] == ids[0][0]


def test_claim_and_queue_change_together(services, broker, redis_client):
    app, reader = broker
    direct = SingleScriptHandoff(
        services.redis, app, TEST_REDIS_URL, SeenDeliveries({}, 60), services.journal
    )
    first, second = delivery(1), delivery(2)
    for sample in (first, second):  # registered: for the main queue (test below)
        services.jobs.register(sample.job_id, "replicate", f"ext-{sample.delivery_id}")
    claim_key = keys.delivery_claim("replicate", second.delivery_id, second.job_id)
    redis_client.set(claim_key, PENDING)  # a receiver before the journal is enqueueing it

    assert direct.accept(first) is Claim.NEW
    assert direct.accept(first) is Claim.DUPLICATE
    assert direct.accept(second) is Claim.IN_FLIGHT

    assert reader.llen(QUEUE) == 1  # the duplicate and the in-flight one pushed nothing
    (bucket,) = seen_buckets(redis_client, "replicate", first.delivery_id, first.job_id)
    assert 0 < redis_client.ttl(bucket) <= 90  # a window of 60 s: kept 60 to 90 s
    assert seen_buckets(redis_client, "replicate", second.delivery_id, second.job_id) == []
    assert redis_client.get(claim_key) == PENDING


def test_the_receiver_uses_one_call_here_and_journal_then_publish_with_another_broker(
    app, services, quiet_broker
):
    assert isinstance(app.extensions["handoff"], SingleScriptHandoff)
    other = build_handoff(
        services.settings, services.redis, services.claims, services.journal, quiet_broker
    )
    assert isinstance(other, JournalThenPublishHandoff)  # a separate redis-server


def test_deliveries_through_the_one_call_path_are_applied_by_the_worker(
    client, app, services, worker, redis_client, job_id
):
    assert isinstance(app.extensions["handoff"], SingleScriptHandoff)
    services.jobs.register(job_id, "replicate", "pred-direct")
    body = body_of({"id": "pred-direct", "status": "succeeded", "output": "out.png"})
    headers = signed_headers(REPLICATE_SECRET, body)

    first = client.post(f"/webhook/replicate/{job_id}", data=body, headers=headers)
    again = client.post(f"/webhook/replicate/{job_id}", data=body, headers=headers)

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.get_json() == {"received": True, "duplicate": True}
    state = wait_for(
        lambda: (
            redis_client.hgetall(keys.job_state(job_id)).get("status") == "completed"
            and redis_client.hgetall(keys.job_state(job_id))
        ),
        message="the worker to apply the delivery",
    )
    assert state["result"] == '"out.png"'


def test_with_the_broker_on_another_server_the_journal_then_publish_path_acknowledges_once(
    services, quiet_broker, job_id
):
    receiver = client_for(services, quiet_broker)
    body = body_of({"id": "p", "status": "processing"})
    headers = signed_headers(REPLICATE_SECRET, body)

    answers = [
        receiver.post(f"/webhook/replicate/{job_id}", data=body, headers=headers).status_code
        for _ in range(2)
    ]

    assert answers == [202, 200]


def test_a_delivery_for_a_job_with_no_mapping_goes_to_the_unmatched_queue(receiver_with):
    """Issue 14, finding 4: first attempts for unknown jobs queue apart from the
    rest, in the message kombu writes for send_task(..., queue=UNMATCHED_QUEUE)."""
    from celeryconfig import QUEUE as MAIN
    from celeryconfig import UNMATCHED_QUEUE

    receiver = receiver_with()  # its own Redis as state and broker: no worker reads it
    receiver.register("job-known", "replicate", "p-known")
    for job in ("job-known", "job-unknown"):
        body = body_of({"id": f"p-{job}", "status": "processing"})
        answer = receiver.client.post(
            f"/webhook/replicate/{job}", data=body, headers=signed_headers(REPLICATE_SECRET, body)
        )
        assert answer.status_code == 202

    assert (receiver.raw.llen(MAIN), receiver.raw.llen(UNMATCHED_QUEUE)) == (1, 1)
    ours = json.loads(receiver.raw.rpop(UNMATCHED_QUEUE))
    receiver.celery.send_task("webhook_ingest.ingest", args=[{}], queue=UNMATCHED_QUEUE)
    by_kombu = json.loads(receiver.raw.rpop(UNMATCHED_QUEUE))
    assert ours["properties"]["delivery_info"] == by_kombu["properties"]["delivery_info"]
    args = json.loads(base64.b64decode(ours["body"]))[0]
    assert Delivery.from_message(args[0]).job_id == "job-unknown"


def test_the_journal_then_publish_path_queues_apart_too(receiver_with, own_redis):
    """With a broker on another Redis server (or RabbitMQ), the receiver publishes
    through kombu, and a job with no mapping still goes to the unmatched queue."""
    import redis

    from celeryconfig import QUEUE as MAIN
    from celeryconfig import UNMATCHED_QUEUE

    receiver = receiver_with(broker_url=own_redis.url)
    receiver.raw.flushall()
    assert isinstance(receiver.client.application.extensions["handoff"], JournalThenPublishHandoff)
    receiver.register("job-known", "replicate", "p-known")
    for job in ("job-known", "job-unknown"):
        body = body_of({"id": f"p-{job}", "status": "processing"})
        answer = receiver.client.post(
            f"/webhook/replicate/{job}", data=body, headers=signed_headers(REPLICATE_SECRET, body)
        )
        assert answer.status_code == 202

    broker = redis.Redis.from_url(own_redis.url)
    assert (broker.llen(MAIN), broker.llen(UNMATCHED_QUEUE)) == (1, 1)
    broker.close()

"""The receiver's HTTP answers, row by row of the contract's table (CONTRACT.md §3).

`POST /webhook/<provider>[/<job_id>]` answers 2xx only for a verified delivery the
broker holds; every rejection is a small JSON `{"error": ...}` that echoes no
secret, signature or body, and leaves Redis exactly as it was.

Most tests run the app against a redis-server of their own that is both the
state store and the broker, so "nothing was written" also means "nothing was
enqueued", and no worker of another test can write into the database while a
test compares it. Only the test that needs a delivery applied uses the shared
fixtures and the in-process worker.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import time
import urllib.parse
import uuid
from dataclasses import dataclass

import pytest
import redis
from standardwebhooks.webhooks import Webhook, hmac_data

from tests.conftest import OPENAI_SECRET, REPLICATE_OLD_SECRET, REPLICATE_SECRET
from tests.support import (
    PrivateRedis,
    Subscriber,
    body_of,
    celery_for,
    queued_in,
    seen_buckets,
    signed_headers,
    wait_for,
)
from webhook_ingest.config import ConfigError
from webhook_ingest.handoff import JournalThenPublishHandoff, SingleScriptHandoff, build_handoff
from webhook_ingest.observability.json_logs import JsonFormatter
from webhook_ingest.services import build_services
from webhook_ingest.state import keys
from webhook_ingest.web.app import create_app

QUEUE = "webhook_ingest"  # celeryconfig.task_default_queue
MAX_BODY_BYTES = 65536  # set by tests/conftest.py
ALL_SECRETS = (OPENAI_SECRET, REPLICATE_SECRET, REPLICATE_OLD_SECRET)


# -- an app on a Redis of its own -------------------------------------------------


@dataclass
class Isolated:
    client: object  # flask test client
    redis: redis.Redis  # decoded replies
    raw: redis.Redis  # bytes, for DUMP
    services: object

    def snapshot(self) -> dict[bytes, bytes]:
        """Every key with its serialized value: any write shows up as a difference.

        Rate-limit counters are left out: counting rejected requests is their job.
        """
        return {
            key: self.raw.dump(key) for key in self.raw.keys("*") if not key.startswith(b"LIMITS:")
        }

    def queued(self) -> int:
        return queued_in(self.redis)


@pytest.fixture(scope="module")
def private_redis():
    server = PrivateRedis().start()
    yield server
    server.cleanup()


def build_app(environ: dict[str, str], broker_url: str, handoff_kind: str = "single_script"):
    services = build_services(environ=environ)
    celery_app = celery_for(broker_url)
    handoff = HANDOFFS[handoff_kind](services, celery_app)
    flask_app = create_app(services, celery_app, handoff)
    flask_app.testing = True
    return flask_app, services, celery_app


# Both ways of making a delivery durable answer every row of the table alike.
HANDOFFS = {
    "single_script": lambda services, celery_app: build_handoff(
        services.settings, services.redis, services.claims, services.journal, celery_app
    ),
    "journal_then_publish": lambda services, celery_app: JournalThenPublishHandoff(
        services.claims, services.journal, celery_app
    ),
}


@pytest.fixture(params=HANDOFFS)
def isolated(private_redis, request):
    environ = dict(os.environ, REDIS_URL=private_redis.url, CELERY_BROKER_URL=private_redis.url)
    flask_app, services, celery_app = build_app(environ, private_redis.url, request.param)
    # the state's own server is the broker here: the default picks the one-call path
    expected = (
        SingleScriptHandoff if request.param == "single_script" else JournalThenPublishHandoff
    )
    assert type(flask_app.extensions["handoff"]) is expected
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    raw = redis.Redis.from_url(private_redis.url)
    client.flushall()
    yield Isolated(client=flask_app.test_client(), redis=client, raw=raw, services=services)
    celery_app.close()
    services.redis.close()
    client.close()
    raw.close()


# -- deliveries -------------------------------------------------------------------


def canary() -> str:
    """A marker that would show if an error body echoed what it was sent."""
    return f"canary-{uuid.uuid4().hex}"


def prediction(external_id: str = "pred-x", **fields) -> str:
    return body_of({"id": external_id, "status": "starting", "note": canary(), **fields})


def openai_event(response_id: str = "resp_x") -> str:
    return body_of(
        {
            "id": f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "created_at": int(time.time()),
            "type": "response.completed",
            "data": {"id": response_id},
        }
    )


def signed_raw(secret: str, raw: bytes, msg_id: str | None = None) -> dict[str, str]:
    """Standard Webhooks headers for bytes that are not valid UTF-8.

    `Webhook.sign` takes text; the signed content is `{id}.{timestamp}.{body bytes}`,
    so the package's own key decoding and HMAC are used on the bytes directly.
    """
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = str(int(time.time()))
    key = Webhook(secret)._whsecret
    digest = hmac_data(key, f"{msg_id}.{timestamp}.".encode() + raw)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": f"v1,{base64.b64encode(digest).decode()}",
        "content-type": "application/json",
    }


def claim_key(provider: str, msg_id: str, job_id: str | None = None) -> str:
    """A claim as versions before the seen-delivery buckets wrote it (still read)."""
    return keys.delivery_claim(provider, msg_id, job_id)


# -- what every rejection looks like ----------------------------------------------


def assert_error(response, status: int, *, sent_body=b"", sent_headers=None) -> dict:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.is_json, response.content_type
    payload = response.get_json()
    assert isinstance(payload, dict) and payload.get("error"), payload
    text = response.get_data(as_text=True)
    assert "Traceback" not in text
    for secret in ALL_SECRETS:
        assert secret not in text
        assert secret.removeprefix("whsec_") not in text
    for name, value in (sent_headers or {}).items():
        if name.lower() == "webhook-signature" and value.strip():
            assert value not in text
            for signature in value.split():
                encoded = signature.partition(",")[2]
                assert len(encoded) < 8 or encoded not in text
    body = sent_body.encode() if isinstance(sent_body, str) else sent_body
    if len(body) >= 8:
        assert body.decode("utf-8", "replace") not in text
    if b"canary-" in body:
        start = body.index(b"canary-")
        assert body[start : start + 39].decode() not in text
    return payload


def assert_rejected_without_writes(isolated, send, status: int):
    """`send()` returns (response, body, headers); Redis must be untouched."""
    before = isolated.snapshot()
    response, body, headers = send()
    payload = assert_error(response, status, sent_body=body, sent_headers=headers)
    assert isolated.snapshot() == before, "a rejected request wrote to Redis"
    assert isolated.queued() == 0
    return response, payload


# -- accepted deliveries -----------------------------------------------------------


@pytest.mark.parametrize(
    "secret", [REPLICATE_SECRET, REPLICATE_OLD_SECRET], ids=["current-secret", "old-secret"]
)
def test_signed_replicate_delivery_is_received_and_enqueued(isolated, secret, job_id):
    body = prediction()
    headers = signed_headers(secret, body)

    response = isolated.client.post(f"/webhook/replicate/{job_id}", data=body, headers=headers)

    assert response.status_code == 202
    assert response.get_json() == {"received": True}
    assert isolated.queued() == 1, "2xx must mean the broker holds the delivery"
    assert seen_buckets(isolated.redis, "replicate", headers["webhook-id"], job_id)


def test_signed_openai_delivery_to_the_project_url_is_received(isolated):
    body = openai_event()
    headers = signed_headers(OPENAI_SECRET, body)

    response = isolated.client.post("/webhook/openai", data=body, headers=headers)

    assert response.status_code == 202
    assert response.get_json() == {"received": True}
    assert isolated.queued() == 1


def test_signature_covers_the_raw_bytes_not_the_parsed_json(isolated, job_id):
    """Verification runs on the body as sent: odd formatting verifies, re-encoding does not."""
    odd = '{"id":"pred-x",   "status" : "starting"}\n'
    headers = signed_headers(REPLICATE_SECRET, odd)
    url = f"/webhook/replicate/{job_id}"

    reformatted = body_of({"id": "pred-x", "status": "starting"})
    assert_rejected_without_writes(
        isolated,
        lambda: (isolated.client.post(url, data=reformatted, headers=headers), odd, headers),
        401,
    )
    accepted = isolated.client.post(url, data=odd, headers=headers)
    assert accepted.status_code == 202


# -- rejections: one per row of the table ----------------------------------------

JOB = "job-abc123"


def _post(path, body, headers, **kwargs):
    def send(client):
        return client.post(path, data=body, headers=headers, **kwargs), body, headers

    return send


def _case_unknown_provider_per_job():
    body = prediction()
    return _post(f"/webhook/nosuch/{JOB}", body, signed_headers(REPLICATE_SECRET, body))


def _case_unknown_provider_project_url():
    body = openai_event()
    return _post("/webhook/nosuch", body, signed_headers(OPENAI_SECRET, body))


def _case_missing_headers(*missing):
    def build():
        body = prediction()
        headers = signed_headers(REPLICATE_SECRET, body)
        for name in missing:
            del headers[name]
        return _post(f"/webhook/replicate/{JOB}", body, headers)

    return build


def _case_wrong_secret():
    body = prediction()
    other = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    return _post(f"/webhook/replicate/{JOB}", body, signed_headers(other, body))


def _case_other_providers_secret():
    body = prediction()
    return _post(f"/webhook/replicate/{JOB}", body, signed_headers(OPENAI_SECRET, body))


def _case_tampered_body():
    body = prediction(status="starting")
    headers = signed_headers(REPLICATE_SECRET, body)
    return _post(f"/webhook/replicate/{JOB}", body.replace("starting", "canceled"), headers)


def _case_tampered_webhook_id():
    body = prediction()
    headers = signed_headers(REPLICATE_SECRET, body)
    headers["webhook-id"] = f"msg_{uuid.uuid4().hex}"
    return _post(f"/webhook/replicate/{JOB}", body, headers)


def _case_tampered_timestamp():
    body = prediction()
    headers = signed_headers(REPLICATE_SECRET, body)
    headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) + 1)
    return _post(f"/webhook/replicate/{JOB}", body, headers)


def _case_timestamp(offset_seconds):
    def build():
        body = prediction()
        headers = signed_headers(REPLICATE_SECRET, body, timestamp=time.time() + offset_seconds)
        return _post(f"/webhook/replicate/{JOB}", body, headers)

    return build


def _big_body() -> str:
    padding = "x" * (MAX_BODY_BYTES + 1)
    return body_of({"id": "pred-x", "status": "starting", "padding": padding})


def _case_too_large_with_content_length():
    body = _big_body()
    return _post(f"/webhook/replicate/{JOB}", body, signed_headers(REPLICATE_SECRET, body))


def _case_too_large_streamed():
    """No Content-Length, a body that ends with the stream (as a chunked request does)."""
    body = _big_body()
    headers = {**signed_headers(REPLICATE_SECRET, body), "Transfer-Encoding": "chunked"}

    def send(client):
        response = client.post(
            f"/webhook/replicate/{JOB}",
            input_stream=io.BytesIO(body.encode()),
            headers=headers,
            environ_overrides={"wsgi.input_terminated": True},
        )
        return response, body, headers

    return send


def test_streamed_body_within_the_limit_is_received(isolated, job_id):
    """The streamed (no Content-Length) request of the 413 case works for a normal body."""
    body = prediction()
    headers = {**signed_headers(REPLICATE_SECRET, body), "Transfer-Encoding": "chunked"}

    response = isolated.client.post(
        f"/webhook/replicate/{job_id}",
        input_stream=io.BytesIO(body.encode()),
        headers=headers,
        environ_overrides={"wsgi.input_terminated": True},
    )

    assert response.status_code == 202
    assert isolated.queued() == 1


def _case_signed(body: str | bytes, path: str = f"/webhook/replicate/{JOB}"):
    def build():
        if isinstance(body, bytes):
            headers = signed_raw(REPLICATE_SECRET, body)
        else:
            headers = signed_headers(REPLICATE_SECRET, body)
        return _post(path, body, headers)

    return build


def _case_unsigned_not_json():
    return _post(f"/webhook/replicate/{JOB}", "this is not json " + canary(), {})


def _case_get():
    def send(client):
        return client.get(f"/webhook/replicate/{JOB}"), b"", {}

    return send


REJECTIONS = [
    # unknown or unconfigured provider -> 404
    pytest.param(_case_unknown_provider_per_job, 404, id="unknown-provider"),
    pytest.param(_case_unknown_provider_project_url, 404, id="unknown-provider-project-url"),
    # missing/invalid signature or timestamp out of tolerance -> 401
    pytest.param(
        _case_missing_headers("webhook-id", "webhook-timestamp", "webhook-signature"),
        401,
        id="no-signature-headers",
    ),
    pytest.param(_case_missing_headers("webhook-id"), 401, id="no-webhook-id"),
    pytest.param(_case_missing_headers("webhook-timestamp"), 401, id="no-webhook-timestamp"),
    pytest.param(_case_missing_headers("webhook-signature"), 401, id="no-webhook-signature"),
    pytest.param(_case_wrong_secret, 401, id="wrong-secret"),
    pytest.param(_case_other_providers_secret, 401, id="other-providers-secret"),
    pytest.param(_case_tampered_body, 401, id="tampered-body"),
    pytest.param(_case_tampered_webhook_id, 401, id="tampered-webhook-id"),
    pytest.param(_case_tampered_timestamp, 401, id="tampered-timestamp"),
    pytest.param(_case_timestamp(-600), 401, id="timestamp-10-minutes-old"),
    pytest.param(_case_timestamp(+600), 401, id="timestamp-10-minutes-ahead"),
    # verification runs before parsing
    pytest.param(_case_unsigned_not_json, 401, id="unsigned-not-json"),
    # body over MAX_BODY_BYTES -> 413
    pytest.param(_case_too_large_with_content_length, 413, id="too-large-content-length"),
    pytest.param(_case_too_large_streamed, 413, id="too-large-streamed"),
    # body not JSON / not an object -> 400
    pytest.param(_case_signed("not json at all " + canary()), 400, id="not-json"),
    pytest.param(_case_signed(""), 400, id="empty-body"),
    pytest.param(
        _case_signed(body_of([{"id": "pred-x", "status": "starting"}])), 400, id="json-array"
    ),
    pytest.param(_case_signed(body_of("pred-x " + canary())), 400, id="json-string"),
    pytest.param(_case_signed("null"), 400, id="json-null"),
    # JSON has no NaN; Python's parser would take it and JSON.parse downstream would not
    pytest.param(_case_signed('{"id": "pred-x", "score": NaN}'), 400, id="json-nan"),
    # issue 14, finding 8: these parsed (to inf, to a string Redis cannot store) and
    # became `error` dead letters with a traceback in the worker
    pytest.param(
        _case_signed('{"id": "pred-x", "status": "succeeded", "output": 1e999}'),
        400,
        id="json-1e999",
    ),
    pytest.param(_case_signed('{"id": "pred-x", "score": [-1E+400]}'), 400, id="json-minus-1e400"),
    # an integer no double can hold: JSON.parse downstream reads Infinity
    pytest.param(
        _case_signed('{"id": "pred-x", "n": 1' + "0" * 400 + "}"),
        400,
        id="json-integer-beyond-doubles",
    ),
    pytest.param(
        _case_signed('{"id": "pred-x", "status": "succeeded", "output": "\\ud800"}'),
        400,
        id="json-lone-high-surrogate",
    ),
    pytest.param(
        _case_signed('{"id": "pred-x", "\\udfff": {"a": ["x\\udc00y"]}}'),
        400,
        id="json-lone-low-surrogates",
    ),
    pytest.param(_case_signed("42"), 400, id="json-number"),
    pytest.param(
        _case_signed(b'{"id": "pred-x", "status": "\xff\xfe starting"}'), 400, id="invalid-utf8"
    ),
    pytest.param(_case_signed(prediction()[:-5]), 400, id="truncated-json"),
    # a job id that cannot be a job id -> 400
    pytest.param(
        _case_signed(prediction(), f"/webhook/replicate/{'j' * 300}"), 400, id="job-id-300-chars"
    ),
    pytest.param(
        _case_signed(prediction(), "/webhook/replicate/job%20abc"), 400, id="job-id-with-space"
    ),
    pytest.param(
        _case_signed(prediction(), "/webhook/replicate/..job"), 400, id="job-id-leading-dot"
    ),
    pytest.param(
        _case_signed(prediction(), "/webhook/replicate/j%C3%B6b"), 400, id="job-id-non-ascii"
    ),
    # issue 14, finding 8: `$` also matched before a trailing newline (202)
    pytest.param(
        _case_signed(prediction(), "/webhook/replicate/job-1%0a"), 400, id="job-id-trailing-lf"
    ),
    pytest.param(
        _case_signed(prediction(), "/webhook/replicate/job-1%0d%0a"),
        400,
        id="job-id-trailing-crlf",
    ),
    # not a webhook method -> 405
    pytest.param(_case_get, 405, id="get"),
]


@pytest.mark.parametrize(("build", "status"), REJECTIONS)
def test_rejected_delivery_answers_json_error_and_writes_nothing(isolated, build, status):
    assert_rejected_without_writes(isolated, lambda: build()(isolated.client), status)


# C1 controls, line and paragraph separators, a bidi override: raw in a log line they
# end it early for JavaScript readers and some collectors, or rearrange what is shown.
UNSAFE_IN_LOGS = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def test_a_rejected_job_id_reaches_the_json_log_escaped_and_shortened(isolated, caplog):
    # Issue 14, finding 8: raw U+2028 and C1 characters reached the JSON logs, and
    # a rejected id was logged whole, however long.
    caplog.set_level(logging.INFO, logger="webhook_ingest.web.receiver")
    tricky = "job\u2028line\u2029para\x85nel\x9bcsi\u202eevil" + "j" * 3000
    body = prediction()
    headers = signed_headers(REPLICATE_SECRET, body)
    before = isolated.snapshot()

    response = isolated.client.post(
        "/webhook/replicate/" + urllib.parse.quote(tricky), data=body, headers=headers
    )

    assert_error(response, 400, sent_body=body, sent_headers=headers)
    assert isolated.snapshot() == before
    lines = [
        JsonFormatter().format(record)
        for record in caplog.records
        if record.name == "webhook_ingest.web.receiver"
    ]
    assert lines
    assert not [line for line in lines if UNSAFE_IN_LOGS.search(line)], lines
    entry = json.loads(lines[-1])
    assert entry["outcome"] == "invalid_job_id"
    # the characters are kept, escaped as JSON; the id cut to a readable length
    assert entry["job_id"].startswith("job\u2028line\u2029para\x85nel\x9bcsi\u202eevil")
    assert len(entry["job_id"]) <= 80


def test_job_id_with_encoded_slash_is_rejected_and_writes_nothing(isolated):
    """`%2F` decodes to `/` before routing, so this is not a webhook URL at all."""
    body = prediction()
    headers = signed_headers(REPLICATE_SECRET, body)
    before = isolated.snapshot()

    response = isolated.client.post("/webhook/replicate/a%2Fb", data=body, headers=headers)

    assert response.status_code in (400, 404)
    assert_error(response, response.status_code, sent_body=body, sent_headers=headers)
    assert isolated.snapshot() == before


def test_a_unix_socket_redis_url_stops_the_receiver_at_start(private_redis):
    """Issue 14, finding 8: it passed validation, then failed at run time."""
    environ = dict(os.environ, REDIS_URL="unix:///var/run/redis/redis.sock", CELERY_BROKER_URL="")

    with pytest.raises(ConfigError, match="REDIS_URL: unix sockets"):
        build_app(environ, private_redis.url)


def test_unconfigured_provider_is_404_and_writes_nothing(isolated, private_redis):
    """openai is a known provider; without WEBHOOK_SECRET_OPENAI it accepts nothing."""
    environ = {k: v for k, v in os.environ.items() if k != "WEBHOOK_SECRET_OPENAI"}
    environ.update(REDIS_URL=private_redis.url, CELERY_BROKER_URL=private_redis.url)
    flask_app, services, celery_app = build_app(environ, private_redis.url)
    assert not services.providers["openai"].enabled
    client = flask_app.test_client()
    try:
        body = openai_event()
        headers = signed_headers(OPENAI_SECRET, body)
        before = isolated.snapshot()

        for path in ("/webhook/openai", "/webhook/openai/job-abc"):
            response = client.post(path, data=body, headers=headers)
            assert_error(response, 404, sent_body=body, sent_headers=headers)
        assert isolated.snapshot() == before
        assert isolated.queued() == 0

        # the configured provider on the same app still works
        body = prediction()
        accepted = client.post(
            "/webhook/replicate/job-abc", data=body, headers=signed_headers(REPLICATE_SECRET, body)
        )
        assert accepted.status_code == 202
    finally:
        celery_app.close()
        services.redis.close()


def test_405_says_which_method_is_allowed(isolated):
    response = isolated.client.get(f"/webhook/replicate/{JOB}")

    assert_error(response, 405)
    allowed = {m.strip() for m in response.headers.get("Allow", "").split(",")}
    assert "POST" in allowed, "RFC 9110: a 405 response must list the allowed methods"


# -- the same delivery again --------------------------------------------------------


def test_repeated_delivery_is_acknowledged_as_duplicate_and_enqueued_once(isolated, job_id):
    body = prediction()
    headers = signed_headers(REPLICATE_SECRET, body)
    url = f"/webhook/replicate/{job_id}"

    answers = [isolated.client.post(url, data=body, headers=headers) for _ in range(3)]

    assert answers[0].status_code == 202
    assert answers[0].get_json() == {"received": True}
    for again in answers[1:]:
        assert 200 <= again.status_code < 300
        assert again.get_json() == {"received": True, "duplicate": True}
    assert isolated.queued() == 1


@pytest.mark.parametrize("handoff_kind", HANDOFFS)
def test_over_rate_limit_a_new_delivery_gets_429_and_nothing_is_kept(private_redis, handoff_kind):
    """RATE_LIMIT is counted in the hand-off's own claim script, on both paths:
    over it, no claim, no journal record, nothing queued — and a provider's
    retry of a delivery already kept is still a duplicate."""
    environ = dict(
        os.environ,
        REDIS_URL=private_redis.url,
        CELERY_BROKER_URL=private_redis.url,
        RATE_LIMIT="2/minute",
    )
    flask_app, services, celery_app = build_app(environ, private_redis.url, handoff_kind)
    raw = redis.Redis.from_url(private_redis.url)
    raw.flushall()
    client = flask_app.test_client()
    try:
        first = prediction()
        first_headers = signed_headers(REPLICATE_SECRET, first)
        url = "/webhook/replicate/job-rate"
        assert client.post(url, data=first, headers=first_headers).status_code == 202
        second = prediction()
        second_headers = signed_headers(REPLICATE_SECRET, second)
        assert client.post(url, data=second, headers=second_headers).status_code == 202
        kept = {k: raw.dump(k) for k in raw.keys("*") if not k.startswith(b"webhook_ingest:rate:")}

        over_body = prediction()
        over = client.post(url, data=over_body, headers=signed_headers(REPLICATE_SECRET, over_body))
        again = client.post(url, data=first, headers=first_headers)

        assert over.status_code == 429, over.get_data(as_text=True)
        assert over.get_json() == {"error": "too many requests"}
        assert 1 <= int(over.headers["Retry-After"]) <= 60
        after = {k: raw.dump(k) for k in raw.keys("*") if not k.startswith(b"webhook_ingest:rate:")}
        assert after == kept, "a rate-limited delivery was claimed, journaled or queued"
        assert again.status_code == 200 and again.get_json()["duplicate"] is True
    finally:
        celery_app.close()
        services.redis.close()
        raw.close()


def test_repeated_delivery_is_applied_and_broadcast_once(
    client, services, worker, redis_client, job_id
):
    services.jobs.register(job_id, "replicate", "pred-x")
    subscriber = Subscriber(redis_client, keys.progress_channel(job_id))
    try:
        body = body_of({"id": "pred-x", "status": "processing", "logs": " 35%|###  | 35/100\n"})
        headers = signed_headers(REPLICATE_SECRET, body)
        url = f"/webhook/replicate/{job_id}"

        answers = [client.post(url, data=body, headers=headers) for _ in range(3)]

        assert [a.status_code for a in answers][0] == 202
        assert all(200 <= a.status_code < 300 for a in answers)
        assert answers[0].get_json() == {"received": True}
        assert [a.get_json() for a in answers[1:]] == [{"received": True, "duplicate": True}] * 2

        wait_for(
            lambda: redis_client.hget(keys.job_state(job_id), "progress") == "35",
            message="the delivery to be applied",
        )
        broadcasts = subscriber.drain(settle=1.0)
        assert len(broadcasts) == 1, broadcasts
        channel, update = broadcasts[0]
        assert channel == keys.progress_channel(job_id)
        assert update["job_id"] == job_id
        assert update["status"] == "processing"
        assert update["progress"] == 35
        # the worker saw it once: the receiver answered the copies itself
        events = [json.loads(e) for e in redis_client.lrange(keys.job_events(job_id), 0, -1)]
        assert [e["outcome"] for e in events if e["delivery_id"] == headers["webhook-id"]] == [
            "applied"
        ]
    finally:
        subscriber.close()


def test_delivery_whose_first_attempt_is_still_pending_gets_409_and_is_not_enqueued(
    isolated, job_id
):
    body = prediction()
    headers = signed_headers(REPLICATE_SECRET, body)
    key = claim_key("replicate", headers["webhook-id"], job_id)
    isolated.redis.set(key, "pending", ex=30)  # a concurrent first attempt is enqueueing
    url = f"/webhook/replicate/{job_id}"

    response = isolated.client.post(url, data=body, headers=headers)

    assert_error(response, 409, sent_body=body, sent_headers=headers)
    assert int(response.headers["Retry-After"]) >= 0
    assert isolated.queued() == 0
    assert isolated.redis.get(key) == "pending"

    # the first attempt failed and released its claim: the provider's retry is taken
    isolated.redis.delete(key)
    retried = isolated.client.post(url, data=body, headers=headers)
    assert retried.status_code == 202
    assert retried.get_json() == {"received": True}
    assert isolated.queued() == 1


# -- odd requests: 4xx JSON, never a 500 ---------------------------------------------


def _odd_headers(**changes):
    def build():
        body = prediction()
        headers = signed_headers(REPLICATE_SECRET, body)
        headers.update(changes)
        return body, headers

    return build


def _odd_long_webhook_id():
    body = prediction()
    return body, signed_headers(REPLICATE_SECRET, body, msg_id="m" * 5000)


def _odd_control_char_webhook_id():
    body = prediction()
    return body, signed_headers(REPLICATE_SECRET, body, msg_id="msg_\x1bx")


def _odd_many_signatures():
    body = prediction()
    headers = signed_headers(REPLICATE_SECRET, body)
    real = headers["webhook-signature"]
    headers["webhook-signature"] = " ".join(["v1,AAAA"] * 5000 + [real])
    return body, headers


ODD = {
    "empty-body-no-headers": lambda: ("", {}),
    "timestamp-not-a-number": _odd_headers(**{"webhook-timestamp": "yesterday"}),
    "timestamp-float": _odd_headers(**{"webhook-timestamp": f"{time.time():.3f}"}),
    "timestamp-negative": _odd_headers(**{"webhook-timestamp": "-1"}),
    "timestamp-huge": _odd_headers(**{"webhook-timestamp": "9" * 40}),
    "timestamp-unicode-digits": _odd_headers(**{"webhook-timestamp": "١٧٠٠٠٠٠٠٠٠"}),
    "signature-no-version": _odd_headers(**{"webhook-signature": "justgarbage"}),
    "signature-empty-v1": _odd_headers(**{"webhook-signature": "v1,"}),
    "signature-not-base64": _odd_headers(**{"webhook-signature": "v1,!!!not-base64!!!"}),
    "signature-other-version": _odd_headers(**{"webhook-signature": "v2,AAAA v1a,BBBB"}),
    "signature-commas-only": _odd_headers(**{"webhook-signature": ",,,, , ,"}),
    "signature-whitespace": _odd_headers(**{"webhook-signature": "   "}),
    "webhook-id-non-ascii": _odd_headers(**{"webhook-id": "msg_é"}),
    "webhook-id-5000-chars": _odd_long_webhook_id,
    "webhook-id-control-char": _odd_control_char_webhook_id,
    "5000-signatures": _odd_many_signatures,
}


@pytest.mark.parametrize("build", ODD.values(), ids=ODD.keys())
def test_odd_request_gets_a_4xx_json_error_never_a_500(isolated, build):
    body, headers = build()
    before = isolated.snapshot()

    response = isolated.client.post(f"/webhook/replicate/{JOB}", data=body, headers=headers)

    assert 400 <= response.status_code < 500, response.get_data(as_text=True)
    assert_error(response, response.status_code, sent_body=body, sent_headers=headers)
    assert isolated.snapshot() == before


@pytest.mark.parametrize(
    "path",
    ["/webhook", "/webhook/", "/webhook/replicate/job-abc/extra"],
)
def test_paths_beside_the_webhook_routes_get_json_404(isolated, path):
    body = prediction()
    headers = signed_headers(REPLICATE_SECRET, body)

    response = isolated.client.post(path, data=body, headers=headers)

    assert_error(response, 404, sent_body=body, sent_headers=headers)

"""Replay protection and what remembering delivery ids costs (issue 4; README "Security").

A captured delivery can be replayed in two ways: later (its signed timestamp is then
outside WEBHOOK_TOLERANCE_SECONDS: 401, even though the signature is valid), or at
once (its webhook-id is then remembered: 2xx duplicate, enqueued once; checked for
every provider by tests/integration/test_provider_contract.py). The ids are
remembered for their provider's retry window (73 h for OpenAI, past its 72 h of
retries; an hour for Replicate; DELIVERY_DEDUP_TTL_SECONDS_<PROVIDER> overrides,
DELIVERY_DEDUP_TTL_SECONDS for providers that declare none) — so their memory is
measured here, on a redis-server of our own.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis

from tests.conftest import OPENAI_SECRET, REPLICATE_SECRET
from tests.support import seen_buckets, signed_headers
from webhook_ingest.config import ConfigError
from webhook_ingest.handoff.claims import Claim, DeliveryClaims
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.handoff.journal import Journal
from webhook_ingest.handoff.seen import SeenDeliveries
from webhook_ingest.state import keys

URL = "/webhook/replicate/job-1"
DEFAULT_DEDUP_TTL = 73 * 3600
OPENAI_RETRY_HORIZON = 72 * 3600


@pytest.fixture
def make_app(receiver_with):
    """`make_app(**environ)`: the receiver on the module's private Redis (emptied), with
    the two settings under test at their defaults unless `environ` sets them."""

    def build(**environ: str):
        defaults = {"DELIVERY_DEDUP_TTL_SECONDS": None, "WEBHOOK_TOLERANCE_SECONDS": None}
        return receiver_with(**{**defaults, **environ})

    return build


def prediction() -> str:
    return json.dumps({"id": f"pred-{uuid.uuid4().hex[:8]}", "status": "starting"})


# -- a late replay: the signed timestamp ----------------------------------------------------


@pytest.mark.parametrize(
    ("tolerance", "offset"),
    [
        (None, -330),  # default 300 s: half a minute too old
        (None, +330),  # and too far ahead
        (None, -86_400),  # the delivery of yesterday, replayed
        ("60", -90),
        ("60", +90),
    ],
    ids=["default-old", "default-future", "a-day-old", "60s-old", "60s-future"],
)
def test_a_validly_signed_delivery_outside_the_tolerance_is_401_and_writes_nothing(
    make_app, tolerance, offset
):
    environ = {"WEBHOOK_TOLERANCE_SECONDS": tolerance} if tolerance else {}
    app = make_app(**environ)
    body = prediction()
    headers = signed_headers(REPLICATE_SECRET, body, timestamp=time.time() + offset)
    before = app.snapshot()

    response = app.client.post(URL, data=body, headers=headers)

    assert response.status_code == 401, response.get_data(as_text=True)
    assert "timestamp" in response.get_json()["error"]
    assert headers["webhook-signature"].split(",", 1)[1] not in response.get_data(as_text=True)
    assert app.snapshot() == before
    assert app.queued() == 0


@pytest.mark.parametrize(
    ("tolerance", "offset"),
    [(None, -240), (None, +240), ("60", -30), ("60", +30)],
    ids=["default-old", "default-future", "60s-old", "60s-future"],
)
def test_a_delivery_inside_the_tolerance_is_accepted_both_ways(make_app, tolerance, offset):
    """The other side of the boundary: clock skew within tolerance is not a replay."""
    environ = {"WEBHOOK_TOLERANCE_SECONDS": tolerance} if tolerance else {}
    app = make_app(**environ)
    body = prediction()
    headers = signed_headers(REPLICATE_SECRET, body, timestamp=time.time() + offset)

    response = app.client.post(URL, data=body, headers=headers)

    assert response.status_code == 202, response.get_data(as_text=True)
    assert app.queued() == 1


def test_a_replay_with_a_fresh_timestamp_but_the_old_signature_is_401(make_app):
    app = make_app()
    body = prediction()
    captured = signed_headers(REPLICATE_SECRET, body, timestamp=time.time() - 3600)

    replayed = {**captured, "webhook-timestamp": str(int(time.time()))}
    response = app.client.post(URL, data=body, headers=replayed)

    assert response.status_code == 401
    assert app.queued() == 0


# -- an immediate replay: the delivery id -------------------------------------------------------


# The same delivery again, as sent or as the provider's retry signed anew, is each
# provider's contract case (tests/integration/test_provider_contract.py).


def test_the_same_delivery_id_from_another_provider_is_not_a_duplicate(make_app):
    """Ids are only unique per sender: the claim is per provider."""
    app = make_app()
    event = json.dumps({"id": "evt_1", "type": "response.completed", "data": {"id": "resp_1"}})
    body = prediction()

    first = app.client.post(
        URL,
        data=body,
        headers=signed_headers(REPLICATE_SECRET, body, msg_id="msg_shared"),
    )
    second = app.client.post(
        "/webhook/openai", data=event, headers=signed_headers(OPENAI_SECRET, event, "msg_shared")
    )

    assert (first.status_code, second.status_code) == (202, 202)
    assert app.queued() == 2


# -- how long an id is remembered ---------------------------------------------------------------


def remembered_for(app, provider: str, delivery_id: str, job_id: str | None) -> int:
    """Seconds until the bucket holding the delivery expires."""
    (bucket,) = seen_buckets(app.raw, provider, delivery_id, job_id)
    return app.raw.ttl(bucket)


def test_each_provider_remembers_ids_for_its_own_retry_window(make_app):
    """OpenAI retries for 72 h, Replicate for about a minute: an id is kept at least
    its provider's window and at most half as long again (the buckets, handoff.seen)."""
    app = make_app()
    body = prediction()
    headers = signed_headers(REPLICATE_SECRET, body)
    event = json.dumps({"id": "evt_2", "type": "response.completed", "data": {"id": "resp_2"}})
    openai = signed_headers(OPENAI_SECRET, event)

    assert app.client.post(URL, data=body, headers=headers).status_code == 202
    assert app.client.post("/webhook/openai", data=event, headers=openai).status_code == 202

    windows = {name: p.delivery_dedup_seconds for name, p in app.services.providers.items()}
    assert windows["openai"] == DEFAULT_DEDUP_TTL > OPENAI_RETRY_HORIZON
    assert windows["replicate"] == 3600
    assert windows["fal"] == 3 * 3600
    assert windows["runpod"] == 600  # twice the default tolerance, too
    assert windows["stability"] == app.services.settings.dedup_ttl_seconds  # declares none
    kept = remembered_for(app, "openai", openai["webhook-id"], None)
    assert DEFAULT_DEDUP_TTL - 60 <= kept <= DEFAULT_DEDUP_TTL * 1.5, kept
    kept = remembered_for(app, "replicate", headers["webhook-id"], "job-1")
    assert 3600 - 60 <= kept <= 3600 * 1.5, kept


def test_a_providers_window_follows_its_own_variable_and_the_default_the_others(make_app):
    app = make_app(DELIVERY_DEDUP_TTL_SECONDS="5000", DELIVERY_DEDUP_TTL_SECONDS_OPENAI="7000")
    body = prediction()
    headers = signed_headers(REPLICATE_SECRET, body)

    assert app.client.post(URL, data=body, headers=headers).status_code == 202

    windows = {name: p.delivery_dedup_seconds for name, p in app.services.providers.items()}
    assert (windows["openai"], windows["replicate"], windows["stability"]) == (7000, 3600, 5000)
    assert app.services.settings.dedup_ttl_seconds == 5000
    kept = remembered_for(app, "replicate", headers["webhook-id"], "job-1")
    assert 3600 - 60 <= kept <= 3600 * 1.5, kept


def test_no_window_is_shorter_than_twice_the_tolerance(make_app):
    """RunPod retries for 20 s, but a signed timestamp passes for the tolerance on
    either side: a provider's window never drops below the replay floor."""
    app = make_app(WEBHOOK_TOLERANCE_SECONDS="3600", DELIVERY_DEDUP_TTL_SECONDS="7200")

    windows = {name: p.delivery_dedup_seconds for name, p in app.services.providers.items()}
    assert windows["runpod"] == windows["replicate"] == 7200
    assert windows["openai"] == DEFAULT_DEDUP_TTL


@pytest.mark.parametrize(
    ("variable", "value", "error"),
    [
        ("DELIVERY_DEDUP_TTL_SECONDS_REPLICATE", "599", "WEBHOOK_TOLERANCE_SECONDS"),
        ("DELIVERY_DEDUP_TTL_SECONDS_REPLICATE", "an hour", "whole number"),
        ("DELIVERY_DEDUP_TTL_SECONDS_REPLICAT", "3600", "no such provider"),
    ],
    ids=["under-the-replay-floor", "not-a-number", "misspelt-provider"],
)
def test_a_window_variable_that_cannot_be_honoured_stops_the_receiver(
    make_app, variable, value, error
):
    with pytest.raises(ConfigError, match=error) as refused:
        make_app(**{variable: value})

    assert variable in str(refused.value)


@pytest.mark.parametrize(
    ("dedup_ttl", "tolerance"),
    [("60", None), ("299", "300"), ("599", "300"), ("119", "60")],
    ids=["under-the-default-tolerance", "just-under", "under-twice", "under-twice-60s"],
)
def test_an_id_forgotten_while_its_timestamp_is_still_accepted_stops_the_receiver(
    make_app, dedup_ttl, tolerance
):
    """Issue 14, finding 8: with ids remembered for less than the tolerance window,
    a captured delivery replayed after its id was forgotten but while its timestamp
    still passes is accepted again. A timestamp passes for `tolerance` seconds on
    either side, so a delivery first seen at the window's start can be replayed
    for twice the tolerance."""
    environ = {"DELIVERY_DEDUP_TTL_SECONDS": dedup_ttl}
    if tolerance:
        environ["WEBHOOK_TOLERANCE_SECONDS"] = tolerance

    with pytest.raises(ConfigError, match="DELIVERY_DEDUP_TTL_SECONDS") as refused:
        make_app(**environ)

    assert "WEBHOOK_TOLERANCE_SECONDS" in str(refused.value)


def test_ids_remembered_for_twice_the_tolerance_are_enough(make_app):
    app = make_app(DELIVERY_DEDUP_TTL_SECONDS="120", WEBHOOK_TOLERANCE_SECONDS="60")

    assert app.services.settings.dedup_ttl_seconds == 120


def test_a_duplicate_does_not_extend_how_long_the_id_is_remembered(make_app):
    """Otherwise a replay loop could keep an id (and its memory) alive forever."""
    app = make_app()
    body = prediction()
    headers = signed_headers(REPLICATE_SECRET, body)
    assert app.client.post(URL, data=body, headers=headers).status_code == 202
    (bucket,) = seen_buckets(app.raw, "replicate", headers["webhook-id"], "job-1")
    app.raw.expire(bucket, 100)  # as if most of the window had passed

    assert app.client.post(URL, data=body, headers=headers).status_code == 200

    assert 0 < app.raw.ttl(bucket) <= 100


# -- memory per remembered delivery id ----------------------------------------------------------

CLAIMS = 20_000
# bench/growth.py reports the figure; this only catches a key per id coming back
GENEROUS_BYTES_PER_ID = 150


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def test_memory_per_remembered_delivery_id(own_redis):
    """20,000 ids claimed and confirmed as the receiver does, with Standard Webhooks-shaped
    ids (`msg_` + 32 hex, 36 characters) under the replicate provider's key prefix."""
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    claims = DeliveryClaims(client, SeenDeliveries({}, DEFAULT_DEDUP_TTL))
    journal = Journal(client, redrive_after_seconds=300)

    def claim(delivery_id: str) -> Claim:
        delivery = Delivery("replicate", delivery_id, "{}", journaled=True)
        return claims.claim(delivery, journal.record(delivery))

    ids = [f"msg_{uuid.uuid4().hex}" for _ in range(CLAIMS)]
    claim("msg_warm-up")  # load the scripts and connection first
    client.delete(keys.JOURNAL, keys.JOURNAL_MESSAGES)
    before = used_memory(client)

    for delivery_id in ids:
        assert claim(delivery_id) is Claim.NEW
    # the worker finishes every journal record with its delivery's outcome: what
    # stays for the dedup window is the claim
    client.delete(keys.JOURNAL, keys.JOURNAL_MESSAGES)

    after = used_memory(client)
    per_id = (after - before) / CLAIMS
    print(
        f"\nmemory per remembered delivery id: {per_id:.1f} bytes "
        f"(a 12-byte digest in a bucket set, window {DEFAULT_DEDUP_TTL} s); "
        f"{per_id * 1_000_000 / 1024 / 1024:.1f} MiB per million ids "
        f"({per_id * 1_000_000 / 1e6:.1f} MB); redis {client.info('server')['redis_version']}"
    )
    buckets = client.keys("webhook_ingest:seen:replicate:*")
    assert 1 <= len(buckets) <= 2  # a bucket boundary may fall inside the loop
    assert sum(client.scard(bucket) for bucket in buckets) == CLAIMS + 1
    assert all(client.ttl(bucket) > 0 for bucket in buckets), "every id must expire"
    assert 0 < per_id < GENEROUS_BYTES_PER_ID, per_id
    # and they really are remembered
    assert claim(ids[0]) is Claim.DUPLICATE
    assert claim(ids[-1]) is Claim.DUPLICATE
    client.close()

"""What every provider's webhook does (CONTRACT.md §3), run for each provider.

A provider plugs in its signer, its payload and its rotation (tests/provider_cases.py):
openai and replicate (Standard Webhooks), fal (Ed25519 over a JWKS), runpod (a URL
token) and github (a declarative HMAC provider). For each of them:

- a delivery proven with the current credential is answered 202 and is on the
  broker's queue as it came: provider, job, the provider's delivery id, the body;
- a delivery whose proof does not hold (a changed byte, another token) is 401
  with a bare `{"error": ...}`, writes nothing, queues nothing, and no secret or
  signature shows in the answer or in the logs;
- the same delivery again, as sent or as the provider's retry (signed anew), is
  200 `{"received": true, "duplicate": true}`, queued once;
- mid-rotation either configured credential is accepted, and one configured
  nowhere is not.

The receiver runs on the module's private Redis as state store and broker: no
worker consumes what it queues, and the whole database can be compared.
"""

from __future__ import annotations

import logging
import time
import uuid

import pytest

from tests.provider_cases import CASES, ProviderCase
from tests.support import logged_text
from webhook_ingest.state import keys

# What the fal verifier caches in the state Redis on its first key lookup: shared
# keys, not a trace of the delivery.
KEY_CACHE = b"webhook_ingest:jwks:"


@pytest.fixture(params=CASES, ids=repr)
def case(request) -> ProviderCase:
    return request.param


@pytest.fixture
def receiver(case, receiver_with, api):
    return receiver_with(**case.settings(api))


def send(receiver, sent):
    return receiver.client.post(sent.path, data=sent.body, headers=sent.headers)


def new_delivery_id() -> str:
    return str(uuid.uuid4())


def test_a_proven_delivery_is_202_and_queued_as_it_came(case, receiver, job_id):
    current = case.credentials[0]
    delivery_id = new_delivery_id()
    sent = case.sign(current, job_id, case.body(delivery_id), delivery_id, time.time())

    answer = send(receiver, sent)

    assert answer.status_code == 202, answer.get_data(as_text=True)
    assert answer.get_json() == {"received": True}
    assert receiver.queued() == 1, "2xx must mean the broker holds the delivery"
    queued = receiver.take_queued()
    assert queued.provider == case.name
    assert queued.job_id == case.job_id_in(job_id)
    assert queued.delivery_id == case.delivery_id(sent)
    assert queued.body == sent.body.decode()


def test_a_tampered_delivery_is_401_writes_nothing_and_shows_no_secret(
    case, receiver, job_id, caplog
):
    caplog.set_level(logging.DEBUG)
    delivery_id = new_delivery_id()
    sent = case.sign(case.credentials[0], job_id, case.body(delivery_id), delivery_id, time.time())
    tampered = case.tampered(sent)
    before = receiver.snapshot(KEY_CACHE)

    answer = send(receiver, tampered)

    assert answer.status_code == 401
    assert set(answer.get_json()) == {"error"}
    assert receiver.snapshot(KEY_CACHE) == before, "a rejected delivery wrote to Redis"
    assert receiver.queued() == 0
    assert not receiver.redis.keys(keys.delivery_claims(case.name))
    text, logs = answer.get_data(as_text=True), logged_text(caplog.records)
    for secret in case.secret_texts(sent) + case.secret_texts(tampered):
        assert secret not in text
        assert secret not in logs


def test_the_same_delivery_again_is_a_duplicate_queued_once(case, receiver, job_id):
    current = case.credentials[0]
    delivery_id = new_delivery_id()
    body = case.body(delivery_id)
    first = case.sign(current, job_id, body, delivery_id, time.time() - 60)
    # the provider's retry: the same delivery sent again later, signed anew
    retry = case.sign(current, job_id, body, delivery_id, time.time())
    if case.signs_the_time():
        assert retry.headers != first.headers

    answers = [send(receiver, first), send(receiver, first), send(receiver, retry)]

    assert answers[0].status_code == 202
    assert answers[0].get_json() == {"received": True}
    for again in answers[1:]:
        assert again.status_code == 200
        assert again.get_json() == {"received": True, "duplicate": True}
    assert receiver.queued() == 1, "a delivery sent again must be queued once"
    assert receiver.take_queued().delivery_id == case.delivery_id(first)


def test_mid_rotation_either_configured_credential_is_accepted(case, receiver, job_id):
    """Two credentials configured (the new one first, the old one still valid);
    a third, configured nowhere, is refused."""
    current, previous, stranger = case.credentials
    answers = {}
    for name, credential in (("current", current), ("previous", previous), ("other", stranger)):
        delivery_id = new_delivery_id()
        sent = case.sign(credential, job_id, case.body(delivery_id), delivery_id, time.time())
        answers[name] = send(receiver, sent).status_code

    assert answers == {"current": 202, "previous": 202, "other": 401}
    assert receiver.queued() == 2

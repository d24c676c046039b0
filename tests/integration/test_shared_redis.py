"""One Redis client per process: providers use the Services' client, never a pool of
their own (fal's key cache and poll targets, RunPod's poll targets).

Counted on a redis-server of our own, where every connection is one of the
service's: fal and RunPod submitting, polling and verifying, one at a time, need
the one connection the Services' pool opened, not one pool each.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from urllib.parse import urlencode

import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.support import PrivateRedis
from webhook_ingest.config import load_settings
from webhook_ingest.providers import JobRef, JobRequest
from webhook_ingest.providers.runpod import RunPodProvider
from webhook_ingest.services import build_services

HOOKS = "https://hooks.example.com"
JWKS_PATH = "/.well-known/jwks.json"
ENDPOINT = "ep-shared"
TOKEN = "runpod-url-token-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def private_redis():
    server = PrivateRedis().start()
    yield server
    server.cleanup()


def environ_for(redis_url: str, api) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "WEBHOOK_BASE_URL": HOOKS,
        "WEBHOOK_JWKS_URL_FAL": f"{api.url}{JWKS_PATH}",
        "FAL_BASE_URL": api.url,
        "FAL_API_KEY": "fal-key",
        "WEBHOOK_URL_TOKEN_RUNPOD": TOKEN,
        "RUNPOD_BASE_URL": f"{api.url}/v2",
        "RUNPOD_API_KEY": "rp-key",
    }


def signed_by(key: Ed25519PrivateKey, body: bytes, request_id: str) -> dict[str, str]:
    """fal's headers for `body` (ed25519 over request id, user, time, body digest)."""
    moment = str(int(time.time()))
    message = "\n".join([request_id, "user-1", moment, hashlib.sha256(body).hexdigest()])
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": "user-1",
        "X-Fal-Webhook-Timestamp": moment,
        "X-Fal-Webhook-Signature": key.sign(message.encode()).hex(),
    }


def jwks_of(key: Ed25519PrivateKey) -> dict:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()  # base64url, unpadded
    return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x}]}


def test_every_provider_is_given_the_services_client(private_redis, api):
    services = build_services(environ=environ_for(private_redis.url, api))

    for name, provider in services.providers.items():
        assert provider.redis is services.redis, name
    services.redis.close()


def test_fal_and_runpod_submit_poll_and_verify_on_the_services_connection(private_redis, api):
    # Connections other tests' objects still hold (closed whenever the garbage
    # collector gets to them) are not this test's: only new ones are counted.
    admin = redis.Redis.from_url(private_redis.url)
    before = {c["id"] for c in admin.client_list()}
    services = build_services(environ=environ_for(private_redis.url, api))
    services.redis.flushall()
    fal, runpod = services.providers["fal"], services.providers["runpod"]
    key = Ed25519PrivateKey.generate()
    api.respond("GET", JWKS_PATH, (200, jwks_of(key)))

    request_id = str(uuid.uuid4())
    webhook = urlencode({"fal_webhook": f"{HOOKS}/webhook/fal/job-fal"})
    api.respond("POST", f"/fal-ai/flux/dev?{webhook}", (200, {"request_id": request_id}))
    api.respond(
        "GET", f"/fal-ai/flux/requests/{request_id}/status", (200, {"status": "IN_PROGRESS"})
    )
    api.respond("POST", f"/v2/{ENDPOINT}/run", (200, {"id": "rp-1", "status": "IN_QUEUE"}))
    api.respond("GET", f"/v2/{ENDPOINT}/status/rp-1", (200, {"id": "rp-1", "status": "IN_QUEUE"}))

    fal.submit(JobRequest("job-fal", {"model": "fal-ai/flux/dev", "input": {}}))
    runpod.submit(JobRequest("job-rp", {"endpoint_id": ENDPOINT, "input": {}}))
    assert fal.poll_job_status(JobRef("job-fal", "fal", request_id)).status == "processing"
    assert runpod.poll_job_status(JobRef("job-rp", "runpod", "rp-1")).status == "processing"
    body = json.dumps({"request_id": request_id, "status": "OK", "payload": {}}).encode()
    assert fal.verifier.verify(body, signed_by(key, body, request_id)).delivery_id == request_id

    assert services.redis.exists("webhook_ingest:jwks:fal"), "the key set was shared"
    opened = [c for c in admin.client_list() if c["id"] not in before]
    assert len(opened) == 1, [c["name"] or c["addr"] for c in opened]
    admin.close()
    services.redis.close()


def test_a_provider_built_without_a_client_starts_no_job_it_could_not_poll(api):
    environ = environ_for("redis://127.0.0.1:1/0", api)
    runpod = RunPodProvider(load_settings(environ), environ)

    with pytest.raises(RuntimeError, match="without a Redis client"):
        runpod.submit(JobRequest("job-1", {"endpoint_id": ENDPOINT, "input": {}}))

    assert api.requests == []

"""fal.ai (issue 4; providers.md): Ed25519 deliveries checked with keys from a JWKS,
the key cache, the status mapping, submit and poll.

Every signature is made with a fresh Ed25519 key from `cryptography`, over the
message fal documents (`request_id\\nuser_id\\ntimestamp\\nsha256hex(body)`;
tests.support.fal_headers), and its public half is served as a JWKS by the fake
API server: the code under test sees only what fal would send. Cache time is a
fake clock passed in; no test waits for a TTL or measures time.

What every provider's webhook does (accepted, tampered body, duplicate, two keys
mid-rotation) is checked for fal by tests/integration/test_provider_contract.py.
"""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import urlencode

import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import (
    b64url,
    client_for,
    fal_headers,
    free_port,
    jwk_of,
    jwks,
    new_ed25519_key,
    wait_for,
)
from webhook_ingest.config import ConfigError
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.ingest import ingest
from webhook_ingest.providers import JobRef, JobRequest, PayloadError
from webhook_ingest.providers.fal import FAL_JWKS_URL
from webhook_ingest.providers.http import ProviderError, ProviderNotFound
from webhook_ingest.state import keys
from webhook_ingest.state.job_update import SOURCE_WEBHOOK
from webhook_ingest.submission import submit_job
from webhook_ingest.verification import (
    Ed25519JwksVerifier,
    JwksCache,
    VerificationError,
    VerificationUnavailable,
    Verified,
)

JWKS_PATH = "/.well-known/jwks.json"
FAL_API_KEY = "fal-test-key-0123456789"
HOOKS = "https://hooks.example.com"
TOLERANCE = 300  # WEBHOOK_TOLERANCE_SECONDS default
TTL = 3600
REFETCH = 60


# -- what fal sends ---------------------------------------------------------------


def completion(request_id: str, **fields) -> bytes:
    document = {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": "OK",
        "payload": {"images": [{"url": "https://v3.fal.media/out.png"}], "seed": 42},
        **fields,
    }
    return json.dumps(document).encode()


def new_request_id() -> str:
    return str(uuid.uuid4())


# -- the service on fal settings ------------------------------------------------


def fal_settings(api, **overrides: str | None) -> dict[str, str | None]:
    """fal's variables, keys and API on the fake server (for `services_with`)."""
    return {
        "WEBHOOK_JWKS_URL_FAL": f"{api.url}{JWKS_PATH}",
        "FAL_BASE_URL": api.url,
        "FAL_API_KEY": FAL_API_KEY,
        "WEBHOOK_BASE_URL": HOOKS,
        **overrides,
    }


@pytest.fixture
def signer():
    return new_ed25519_key()


@pytest.fixture
def fal_services(services_with, api, signer):
    api.respond("GET", JWKS_PATH, (200, jwks(signer)))
    return services_with(**fal_settings(api))


@pytest.fixture
def fal_client(fal_services, quiet_broker):
    return client_for(fal_services, quiet_broker)


@pytest.fixture
def applying_client(fal_services, worker):
    """Publishes to the test broker the in-process worker consumes."""
    return client_for(fal_services, None)


def post(client, job_id: str, body: bytes, headers: dict[str, str]):
    return client.post(f"/webhook/fal/{job_id}", data=body, headers=headers)


def jwks_fetches(api) -> int:
    return api.calls("GET", JWKS_PATH)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def cache_for(api, client=None, clock=None, provider="fal") -> JwksCache:
    return JwksCache(
        f"{api.url}{JWKS_PATH}",
        client,
        provider,
        ttl_seconds=TTL,
        refetch_seconds=REFETCH,
        clock=clock or FakeClock(),
    )


def verify_with(
    cache: JwksCache, private: Ed25519PrivateKey, request_id: str | None = None
) -> Verified:
    """A completion signed with `private` as fal signs it, through the verifier. What
    a verification proves is checked each time: fal's request id and the signed time."""
    request_id = request_id or new_request_id()
    body = completion(request_id)
    headers = fal_headers(private, body, request_id)
    verified = Ed25519JwksVerifier(cache, TOLERANCE).verify(body, headers)
    signed_at = int(headers["X-Fal-Webhook-Timestamp"])
    assert verified == Verified(delivery_id=request_id, timestamp=signed_at)
    return verified


# -- accepted and applied ---------------------------------------------------------


def test_a_signed_completion_is_accepted_and_applied_by_the_worker(
    applying_client, fal_services, redis_client, signer, job_id
):
    request_id = new_request_id()
    fal_services.jobs.register(job_id, "fal", request_id)
    body = completion(request_id)

    answer = post(applying_client, job_id, body, fal_headers(signer, body, request_id))

    assert answer.status_code == 202
    assert answer.get_json() == {"received": True}
    state = wait_for(
        lambda: (
            redis_client.hget(keys.job_state(job_id), "status") == "completed"
            and redis_client.hgetall(keys.job_state(job_id))
        ),
        message="the fal completion to be applied",
    )
    assert json.loads(state["result"]) == json.loads(body)["payload"]
    assert state["external_job_id"] == request_id
    assert state["provider"] == "fal"
    assert state["source"] == "webhook"
    assert state["progress"] == "100"


# -- the payload mapping ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "status", "result", "error_message"),
    [
        ({"status": "OK", "payload": {"seed": 7}}, "completed", {"seed": 7}, None),
        (
            {"status": "ERROR", "error": "Invalid status code: 422", "payload": {"detail": []}},
            "failed",
            None,
            "Invalid status code: 422",
        ),
        ({"status": "ERROR", "payload": None}, "failed", None, "fal request failed"),
    ],
    ids=["ok", "error", "error-without-message"],
)
def test_fal_completions_map_to_job_states(
    fal_services, redis_client, job_id, fields, status, result, error_message
):
    request_id = new_request_id()
    fal_services.jobs.register(job_id, "fal", request_id)
    body = json.dumps({"request_id": request_id, "gateway_request_id": "gw", **fields})

    ingest(Delivery("fal", request_id, body, job_id=job_id), fal_services)

    state = redis_client.hgetall(keys.job_state(job_id))
    assert state["status"] == status
    assert state.get("error_message", "") == (error_message or "")
    assert json.loads(state.get("result") or "null") == result


@pytest.mark.parametrize(
    "payload",
    [
        {"gateway_request_id": "gw", "status": "OK", "payload": {}},
        {"request_id": "r-1", "status": "DONE", "payload": {}},
        {"request_id": "r-1", "payload": {}},
    ],
    ids=["no-request-id", "unknown-status", "no-status"],
)
def test_a_completion_fal_does_not_send_is_a_payload_error(fal_services, payload):
    fal = fal_services.providers["fal"]
    with pytest.raises(PayloadError):
        fal.to_update(payload, JobRef("job-1", "fal", "r-1"))


def test_a_result_too_large_for_the_webhook_is_fetched_from_the_queue(fal_services, api, job_id):
    fal = fal_services.providers["fal"]
    request_id = queue_request(api, fal, "fal-ai/flux/dev", job_id)
    api.respond("GET", f"/fal-ai/flux/requests/{request_id}", (200, {"images": ["big"]}))
    payload = {
        "request_id": request_id,
        "status": "OK",
        "payload": None,
        "payload_error": "response too large",
    }

    update = fal.to_update(payload, JobRef(job_id, "fal", request_id))

    assert update.status == "completed"
    assert update.result == {"images": ["big"]}
    assert update.source == SOURCE_WEBHOOK


# -- rejected: 401 ----------------------------------------------------------------


def _header(name, value):
    def tamper(body, headers):
        return body, {**headers, name: value(headers[name])}

    return tamper


def _without(name):
    def tamper(body, headers):
        return body, {k: v for k, v in headers.items() if k != name}

    return tamper


def _flip_last_hex_digit(signature: str) -> str:
    return signature[:-1] + ("0" if signature[-1] != "0" else "1")


# A changed body is the provider contract's case (tests/integration/test_provider_contract.py).
TAMPERINGS = {
    # a different last character, whatever it was (a fixed "0" is no change 1 time in 16)
    "request-id": _header(
        "X-Fal-Webhook-Request-Id", lambda v: v[:-1] + ("1" if v[-1] == "0" else "0")
    ),
    "user-id": _header("X-Fal-Webhook-User-Id", lambda v: v + "x"),
    "timestamp-within-tolerance": _header("X-Fal-Webhook-Timestamp", lambda v: str(int(v) - 1)),
    "signature": _header("X-Fal-Webhook-Signature", _flip_last_hex_digit),
    "signature-not-hex": _header("X-Fal-Webhook-Signature", lambda v: "zz" + v[2:]),
    "signature-truncated": _header("X-Fal-Webhook-Signature", lambda v: v[:-2]),
    "no-request-id": _without("X-Fal-Webhook-Request-Id"),
    "no-user-id": _without("X-Fal-Webhook-User-Id"),
    "no-timestamp": _without("X-Fal-Webhook-Timestamp"),
    "no-signature": _without("X-Fal-Webhook-Signature"),
}


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_a_tampered_delivery_is_rejected_with_401_and_changes_nothing(
    fal_client, fal_services, redis_client, signer, job_id, tamper
):
    request_id = new_request_id()
    fal_services.jobs.register(job_id, "fal", request_id)
    good_body = completion(request_id)
    good_headers = fal_headers(signer, good_body, request_id)
    body, headers = tamper(good_body, good_headers)

    answer = post(fal_client, job_id, body, headers)

    assert answer.status_code == 401
    assert set(answer.get_json()) == {"error"}
    assert good_headers["X-Fal-Webhook-Signature"] not in answer.get_data(as_text=True)
    assert not redis_client.exists(keys.job_state(job_id))
    assert not redis_client.keys(keys.delivery_claims("fal"))


def test_a_delivery_signed_by_a_key_not_in_the_set_is_rejected(fal_client, signer, job_id):
    request_id = new_request_id()
    body = completion(request_id)

    answer = post(fal_client, job_id, body, fal_headers(new_ed25519_key(), body, request_id))

    assert answer.status_code == 401
    assert answer.get_json() == {"error": "verification failed: no matching signature"}


@pytest.mark.parametrize("skew", [-(TOLERANCE + 5), TOLERANCE + 5], ids=["old", "future"])
def test_a_timestamp_outside_the_tolerance_is_rejected(fal_client, api, signer, job_id, skew):
    request_id = new_request_id()
    body = completion(request_id)
    headers = fal_headers(signer, body, request_id, timestamp=time.time() + skew)

    answer = post(fal_client, job_id, body, headers)

    assert answer.status_code == 401
    assert answer.get_json() == {"error": "verification failed: timestamp outside tolerance"}
    assert jwks_fetches(api) == 0  # a stale replay costs no key lookup


def test_a_timestamp_inside_the_tolerance_is_accepted(fal_client, fal_services, signer, job_id):
    request_id = new_request_id()
    fal_services.jobs.register(job_id, "fal", request_id)
    body = completion(request_id)
    headers = fal_headers(signer, body, request_id, timestamp=time.time() - (TOLERANCE - 30))

    assert post(fal_client, job_id, body, headers).status_code == 202


# -- key rotation -----------------------------------------------------------------


def test_a_key_added_after_the_cache_was_filled_is_picked_up_by_a_refetch(
    fal_client, api, signer, job_id
):
    first = new_request_id()
    body = completion(first)
    assert post(fal_client, job_id, body, fal_headers(signer, body, first)).status_code == 202
    rotated = new_ed25519_key()
    api.respond("GET", JWKS_PATH, (200, jwks(signer, rotated)))

    second = new_request_id()
    body = completion(second)
    answer = post(fal_client, job_id, body, fal_headers(rotated, body, second))

    assert answer.status_code == 202
    assert jwks_fetches(api) == 2


def test_unknown_key_refetches_are_rate_limited(api, redis_client, signer):
    clock = FakeClock()
    api.respond("GET", JWKS_PATH, (200, jwks(signer)))
    cache = cache_for(api, redis_client, clock)
    verify_with(cache, signer)
    second, third = new_ed25519_key(), new_ed25519_key()
    api.respond("GET", JWKS_PATH, (200, jwks(signer, second)))
    verify_with(cache, second)  # the first miss refetches at once
    api.respond("GET", JWKS_PATH, (200, jwks(signer, second, third)))

    with pytest.raises(VerificationError):
        verify_with(cache, third)  # within the interval: no refetch, rejected
    with pytest.raises(VerificationError):
        verify_with(cache, new_ed25519_key())
    fetches_within_interval = jwks_fetches(api)
    clock.advance(REFETCH)
    request_id = new_request_id()
    verified = verify_with(cache, third, request_id)

    assert fetches_within_interval == 2
    assert jwks_fetches(api) == 3
    assert verified.delivery_id == request_id


def test_forged_signatures_cost_at_most_one_refetch_per_interval(api, redis_client, signer):
    clock = FakeClock()
    api.respond("GET", JWKS_PATH, (200, jwks(signer)))
    cache = cache_for(api, redis_client, clock)
    verify_with(cache, signer)

    for _ in range(30):
        with pytest.raises(VerificationError):
            verify_with(cache, new_ed25519_key())

    assert jwks_fetches(api) == 2


def test_a_rotation_another_process_fetched_is_taken_from_redis(api, redis_client, signer):
    api.respond("GET", JWKS_PATH, (200, jwks(signer)))
    this_process = cache_for(api, redis_client)
    verify_with(this_process, signer)
    rotated = new_ed25519_key()
    api.respond("GET", JWKS_PATH, (200, jwks(signer, rotated)))
    other_process = cache_for(api, redis_client)
    verify_with(other_process, rotated)  # misses, refetches, shares through Redis
    api.respond("GET", JWKS_PATH, (500, {"error": "down"}))

    request_id = new_request_id()
    verified = verify_with(this_process, rotated, request_id)

    assert verified.delivery_id == request_id
    # the first fill and the other process's refetch; this process only read Redis
    assert jwks_fetches(api) == 2


# -- the cache: no fetch per delivery, shared, stale when the server is down ------


def test_twenty_deliveries_fetch_the_key_set_once(fal_client, fal_services, signer, api, job_id):
    """Signed by either key of a set mid-rotation: one fetch serves both."""
    rotated = new_ed25519_key()
    api.respond("GET", JWKS_PATH, (200, jwks(signer, rotated)))
    request_ids = [new_request_id() for _ in range(20)]
    for n, request_id in enumerate(request_ids):
        body = completion(request_id)
        key = (signer, rotated)[n % 2]
        answer = post(
            fal_client, f"{job_id}-{request_id[:8]}", body, fal_headers(key, body, request_id)
        )
        assert answer.status_code == 202

    assert jwks_fetches(api) == 1


def test_one_fetch_serves_every_process_through_redis(api, redis_client, signer):
    api.respond("GET", JWKS_PATH, (200, jwks(signer)))
    processes = [cache_for(api, redis_client) for _ in range(4)]

    for cache in processes:
        verify_with(cache, signer)

    assert jwks_fetches(api) == 1
    ttl = redis_client.ttl("webhook_ingest:jwks:fal")
    assert 0 < ttl <= TTL
    shared = json.loads(redis_client.get("webhook_ingest:jwks:fal"))
    assert [key["x"] for key in shared["keys"]] == [jwk_of(signer)["x"]]


def test_the_process_cache_expires_after_its_ttl_and_refreshes(api, redis_client, signer):
    clock = FakeClock()
    api.respond("GET", JWKS_PATH, (200, jwks(signer)))
    cache = cache_for(api, redis_client, clock)
    verify_with(cache, signer)
    redis_client.delete("webhook_ingest:jwks:fal")  # the shared copy expired too

    clock.advance(TTL - 1)
    verify_with(cache, signer)
    fetches_before_expiry = jwks_fetches(api)
    clock.advance(2)
    verify_with(cache, signer)

    assert fetches_before_expiry == 1
    assert jwks_fetches(api) == 2


def test_with_the_key_server_down_and_nothing_cached_the_answer_is_503(
    redis_client, services_with, api, quiet_broker, job_id
):
    nothing_listens = f"http://127.0.0.1:{free_port()}{JWKS_PATH}"
    services = services_with(**fal_settings(api, WEBHOOK_JWKS_URL_FAL=nothing_listens))
    client = client_for(services, quiet_broker)
    request_id = new_request_id()
    body = completion(request_id)

    answer = post(client, job_id, body, fal_headers(new_ed25519_key(), body, request_id))

    assert answer.status_code == 503
    assert answer.headers["Retry-After"]
    assert set(answer.get_json()) == {"error"}
    assert not redis_client.exists(keys.job_state(job_id))


@pytest.mark.parametrize(
    "answer",
    [(500, {"error": "down"}), (200, {"keys": []}), (200, {"nothing": 1}), (200, ["x"])],
    ids=["http-500", "empty-set", "no-keys-field", "not-an-object"],
)
def test_without_usable_keys_the_answer_is_503(services_with, api, quiet_broker, job_id, answer):
    api.respond("GET", JWKS_PATH, answer)
    client = client_for(services_with(**fal_settings(api)), quiet_broker)
    request_id = new_request_id()
    body = completion(request_id)

    response = post(client, job_id, body, fal_headers(new_ed25519_key(), body, request_id))

    assert response.status_code == 503


def test_with_the_key_server_down_cached_keys_still_verify(fal_client, api, redis_client, signer):
    first = new_request_id()
    body = completion(first)
    assert post(fal_client, "job-a", body, fal_headers(signer, body, first)).status_code == 202
    api.respond("GET", JWKS_PATH, (503, {"error": "down"}))
    redis_client.delete("webhook_ingest:jwks:fal")

    second = new_request_id()
    body = completion(second)
    answer = post(fal_client, "job-b", body, fal_headers(signer, body, second))

    assert answer.status_code == 202


def test_stale_keys_are_served_when_a_refresh_fails_and_the_refresh_is_not_retried_at_once(
    api, redis_client, signer
):
    clock = FakeClock()
    api.respond("GET", JWKS_PATH, (200, jwks(signer)))
    cache = cache_for(api, redis_client, clock)
    verify_with(cache, signer)
    api.respond("GET", JWKS_PATH, (503, {"error": "down"}))
    redis_client.delete("webhook_ingest:jwks:fal")
    clock.advance(TTL + 1)

    for _ in range(5):
        verify_with(cache, signer)  # stale keys, not a 503
    failed_refreshes = jwks_fetches(api) - 1
    api.respond("GET", JWKS_PATH, (200, jwks(signer)))
    clock.advance(REFETCH)
    verify_with(cache, signer)

    assert failed_refreshes == 1
    assert jwks_fetches(api) == 3
    assert redis_client.exists("webhook_ingest:jwks:fal")  # the recovery was shared


def test_with_no_keys_a_failed_fetch_is_not_retried_by_every_delivery(api, redis_client):
    clock = FakeClock()
    api.respond("GET", JWKS_PATH, (500, {"error": "down"}))
    cache = cache_for(api, redis_client, clock)
    signer = new_ed25519_key()

    for _ in range(5):
        with pytest.raises(VerificationUnavailable):
            verify_with(cache, signer)
    attempts_within_interval = jwks_fetches(api)
    api.respond("GET", JWKS_PATH, (200, jwks(signer)))
    clock.advance(REFETCH)
    request_id = new_request_id()
    verified = verify_with(cache, signer, request_id)

    assert attempts_within_interval == 1  # each would otherwise wait for a timeout
    assert verified.delivery_id == request_id


def test_with_redis_down_keys_come_from_the_url(api, signer):
    api.respond("GET", JWKS_PATH, (200, jwks(signer)))
    unreachable = redis.Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2
    )

    request_id = new_request_id()
    verified = verify_with(cache_for(api, unreachable), signer, request_id)

    assert verified.delivery_id == request_id
    assert jwks_fetches(api) == 1


def test_only_ed25519_signature_keys_of_the_set_are_used(api, redis_client, signer):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = rsa_key.public_key().public_numbers()
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    encryption_key = new_ed25519_key()
    document = {
        "keys": [
            {"kty": "RSA", "n": b64url(numbers.n.to_bytes(256, "big")), "e": "AQAB"},
            {
                "kty": "EC",
                "crv": "P-256",
                "x": b64url(ec_key.x.to_bytes(32, "big")),
                "y": b64url(ec_key.y.to_bytes(32, "big")),
            },
            {**jwk_of(encryption_key), "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": "not base64url!"},
            {"kty": "OKP", "crv": "Ed25519", "x": b64url(b"short")},
            "not an object",
            jwk_of(signer),
        ]
    }
    api.respond("GET", JWKS_PATH, (200, document))
    cache = cache_for(api, redis_client)

    request_id = new_request_id()
    assert verify_with(cache, signer, request_id).delivery_id == request_id
    with pytest.raises(VerificationError):
        verify_with(cache, encryption_key)


# -- configuration ------------------------------------------------------------------


def test_without_a_jwks_url_fal_accepts_nothing(services_with, api, quiet_broker, signer, job_id):
    services = services_with(**fal_settings(api, WEBHOOK_JWKS_URL_FAL=None))
    client = client_for(services, quiet_broker)
    request_id = new_request_id()
    body = completion(request_id)

    answer = post(client, job_id, body, fal_headers(signer, body, request_id))

    assert services.providers["fal"].enabled is False
    assert answer.status_code == 404
    assert answer.get_json() == {"error": "provider not configured"}


def test_fals_published_key_set_is_a_valid_setting(services_with, api):
    services = services_with(**fal_settings(api, WEBHOOK_JWKS_URL_FAL=FAL_JWKS_URL))

    assert services.providers["fal"].verifier.scheme == "ed25519-jwks"
    assert FAL_JWKS_URL == "https://rest.alpha.fal.ai/.well-known/jwks.json"


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"WEBHOOK_JWKS_URL_FAL": "http://keys.example.com/jwks.json"}, "WEBHOOK_JWKS_URL_FAL"),
        ({"WEBHOOK_JWKS_URL_FAL": "ftp://keys.example.com/jwks.json"}, "WEBHOOK_JWKS_URL_FAL"),
        ({"WEBHOOK_SECRET_FAL": "whsec_c2VjcmV0"}, "WEBHOOK_SECRET_FAL"),
        ({"WEBHOOK_JWKS_CACHE_SECONDS": "soon"}, "WEBHOOK_JWKS_CACHE_SECONDS"),
        ({"WEBHOOK_JWKS_REFETCH_SECONDS": "0"}, "WEBHOOK_JWKS_REFETCH_SECONDS"),
    ],
    ids=["plain-http-elsewhere", "not-http", "shared-secret", "bad-ttl", "zero-refetch"],
)
def test_a_bad_fal_setting_stops_the_process_naming_the_variable(
    services_with, api, overrides, variable
):
    with pytest.raises(ConfigError, match=variable):
        services_with(**fal_settings(api, **overrides))


# -- connector: submit and poll -----------------------------------------------------


def submit_path(model: str, job_id: str) -> str:
    return f"/{model}?" + urlencode({"fal_webhook": f"{HOOKS}/webhook/fal/{job_id}"})


def queue_request(api, fal, model: str, job_id: str, answer=None) -> str:
    """Submit through the connector against the fake queue; return the request id.

    `answer(request_id)` is the queue's answer, by default one with fal's URLs."""
    request_id = new_request_id()
    app = "/".join(model.split("/")[:2])
    default = {
        "request_id": request_id,
        "status_url": f"{api.url}/{app}/requests/{request_id}/status",
        "response_url": f"{api.url}/{app}/requests/{request_id}",
    }
    api.respond(
        "POST", submit_path(model, job_id), (200, answer(request_id) if answer else default)
    )
    assert (
        fal.submit(JobRequest(job_id, {"model": model, "input": {"prompt": "a cat"}})) == request_id
    )
    return request_id


def test_fal_is_a_webhook_connector_with_a_per_job_url(fal_services):
    fal = fal_services.providers["fal"]

    config = fal.get_webhook_config("job-1")

    assert fal.supports_webhooks() is True
    assert config.url == f"{HOOKS}/webhook/fal/job-1"
    assert config.auth == "ed25519-jwks"


def test_submit_queues_the_request_with_our_webhook_and_maps_it(
    fal_services, api, redis_client, job_id
):
    request_id = new_request_id()
    api.respond(
        "POST",
        submit_path("fal-ai/flux/dev", job_id),
        (200, {"request_id": request_id, "gateway_request_id": request_id}),
    )

    external_id = submit_job(
        fal_services,
        "fal",
        JobRequest(job_id, {"model": "fal-ai/flux/dev", "input": {"prompt": "a cat"}}),
    )

    assert external_id == request_id
    [sent] = [r for r in api.requests if r["method"] == "POST"]
    assert sent["path"] == submit_path("fal-ai/flux/dev", job_id)
    assert sent["json"] == {"prompt": "a cat"}
    assert sent["headers"]["Authorization"] == f"Key {FAL_API_KEY}"
    mapping = redis_client.hgetall(keys.job_mapping(job_id))
    assert mapping["external_job_id"] == request_id
    assert mapping["provider"] == "fal"


@pytest.mark.parametrize(
    "params",
    [
        {"input": {}},
        {"model": "../admin", "input": {}},
        {"model": "fal-ai/flux?x=1", "input": {}},
        {"model": "single-segment", "input": {}},
        {"model": "fal-ai/flux", "input": "a cat"},
        {"model": "fal-ai/flux", "input": {}, "webhook": "https://elsewhere"},
    ],
    ids=["no-model", "traversal", "query", "one-segment", "input-not-object", "unknown-param"],
)
def test_a_bad_fal_job_is_refused_before_anything_is_sent(fal_services, api, params):
    with pytest.raises(ValueError):
        fal_services.providers["fal"].submit(JobRequest("job-1", params))

    assert api.requests == []


@pytest.mark.parametrize(
    ("status", "expected_status", "progress"),
    [
        ({"status": "IN_QUEUE", "queue_position": 3}, "processing", 0),
        ({"status": "IN_PROGRESS"}, "processing", None),
    ],
    ids=["in-queue", "in-progress"],
)
def test_poll_maps_a_running_request(fal_services, api, job_id, status, expected_status, progress):
    fal = fal_services.providers["fal"]
    request_id = queue_request(api, fal, "fal-ai/flux/dev", job_id)
    api.respond("GET", f"/fal-ai/flux/requests/{request_id}/status", (202, status))

    update = fal.poll_job_status(JobRef(job_id, "fal", request_id))

    assert update.status == expected_status
    assert update.progress == progress
    assert update.source == "orphan_poll"
    assert update.external_job_id == request_id


def test_poll_of_a_completed_request_fetches_its_result(fal_services, api, job_id):
    fal = fal_services.providers["fal"]
    request_id = queue_request(api, fal, "fal-ai/flux/dev", job_id)
    base = f"/fal-ai/flux/requests/{request_id}"
    api.respond("GET", f"{base}/status", (200, {"status": "COMPLETED"}))
    api.respond("GET", base, (200, {"images": [{"url": "https://v3.fal.media/x.png"}]}))

    update = fal.poll_job_status(JobRef(job_id, "fal", request_id))

    assert update.status == "completed"
    assert update.result == {"images": [{"url": "https://v3.fal.media/x.png"}]}
    [status_call] = [r for r in api.requests if r["path"] == f"{base}/status"]
    assert status_call["headers"]["Authorization"] == f"Key {FAL_API_KEY}"


def test_poll_of_a_request_that_completed_with_an_error_fails_the_job(fal_services, api, job_id):
    fal = fal_services.providers["fal"]
    request_id = queue_request(api, fal, "fal-ai/flux/dev", job_id)
    api.respond(
        "GET",
        f"/fal-ai/flux/requests/{request_id}/status",
        (
            200,
            {"status": "COMPLETED", "error": "Request timed out", "error_type": "request_timeout"},
        ),
    )

    update = fal.poll_job_status(JobRef(job_id, "fal", request_id))

    assert update.status == "failed"
    assert update.error_message == "Request timed out"


def test_poll_of_a_request_fal_does_not_know_is_not_found(fal_services, api, job_id):
    fal = fal_services.providers["fal"]
    request_id = queue_request(api, fal, "fal-ai/flux/dev", job_id)
    # nothing answers the status path: the fake API says 404

    with pytest.raises(ProviderNotFound):
        fal.poll_job_status(JobRef(job_id, "fal", request_id))


def test_the_app_comes_from_the_status_url_fal_answered(fal_services, api, job_id):
    fal = fal_services.providers["fal"]
    request_id = queue_request(
        api,
        fal,
        "owner/app/sub/path",
        job_id,
        answer=lambda rid: {
            "request_id": rid,
            "status_url": f"{api.url}/owner/app/requests/{rid}/status",
        },
    )
    api.respond("GET", f"/owner/app/requests/{request_id}/status", (200, {"status": "IN_PROGRESS"}))

    assert fal.poll_job_status(JobRef(job_id, "fal", request_id)).status == "processing"


def test_a_status_url_on_another_host_is_not_trusted(fal_services, api, job_id):
    fal = fal_services.providers["fal"]
    request_id = queue_request(
        api,
        fal,
        "fal-ai/flux/dev",
        job_id,
        answer=lambda rid: {
            "request_id": rid,
            "status_url": f"https://evil.example.com/x/y/requests/{rid}/status",
        },
    )
    api.respond("GET", f"/fal-ai/flux/requests/{request_id}/status", (200, {"status": "IN_QUEUE"}))

    assert fal.poll_job_status(JobRef(job_id, "fal", request_id)).progress == 0


def test_a_request_submitted_elsewhere_cannot_be_polled_and_says_why(fal_services, api):
    fal = fal_services.providers["fal"]

    with pytest.raises(ProviderError, match="no fal app recorded"):
        fal.poll_job_status(JobRef("job-1", "fal", new_request_id()))

    assert api.requests == []


# -- properties: only VerificationError, whatever arrives -----------------------------

FAL_HEADER_NAMES = (
    "X-Fal-Webhook-Request-Id",
    "X-Fal-Webhook-User-Id",
    "X-Fal-Webhook-Timestamp",
    "X-Fal-Webhook-Signature",
)

plausible_headers = st.fixed_dictionaries(
    {
        "X-Fal-Webhook-Request-Id": st.one_of(st.uuids().map(str), st.text(max_size=300)),
        "X-Fal-Webhook-User-Id": st.one_of(st.just("user-1"), st.text(max_size=300)),
        "X-Fal-Webhook-Timestamp": st.one_of(
            st.integers(-(2**40), 2**40).map(str),
            st.just(str(int(time.time()))),
            st.text(max_size=20),
        ),
        "X-Fal-Webhook-Signature": st.one_of(
            st.binary(min_size=0, max_size=80).map(bytes.hex), st.text(max_size=200)
        ),
    }
)
arbitrary_headers = st.one_of(
    plausible_headers,
    st.dictionaries(
        st.sampled_from(FAL_HEADER_NAMES) | st.text(max_size=30), st.text(max_size=200)
    ),
)


@pytest.fixture(scope="module")
def property_keys():
    return new_ed25519_key()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=2048), headers=arbitrary_headers)
def test_with_keys_available_anything_is_accepted_or_a_verification_error(
    fake_api, property_keys, body, headers
):
    fake_api.respond("GET", JWKS_PATH, (200, jwks(property_keys)))
    verifier = Ed25519JwksVerifier(cache_for(fake_api, client=None), TOLERANCE)

    try:
        verifier.verify(body, headers)
    except VerificationError as exc:
        assert exc.reason and "\n" not in exc.reason
    else:
        raise AssertionError("an unsigned delivery was accepted")


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=512), headers=arbitrary_headers)
def test_with_no_keys_obtainable_only_verification_errors_or_unavailable(body, headers):
    nothing_listens = f"http://127.0.0.1:{free_port()}{JWKS_PATH}"
    verifier = Ed25519JwksVerifier(
        JwksCache(nothing_listens, None, "fal", clock=FakeClock()), TOLERANCE
    )

    with pytest.raises((VerificationError, VerificationUnavailable)):
        verifier.verify(body, headers)


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=2048), flip=st.integers(min_value=0))
def test_any_signed_body_verifies_and_any_changed_byte_does_not(fake_api, body, flip):
    private = new_ed25519_key()
    fake_api.respond("GET", JWKS_PATH, (200, jwks(private)))
    verifier = Ed25519JwksVerifier(cache_for(fake_api, client=None), TOLERANCE)
    request_id = new_request_id()
    headers = fal_headers(private, body, request_id)

    signed_at = int(headers["X-Fal-Webhook-Timestamp"])
    assert verifier.verify(body, headers) == Verified(request_id, signed_at)
    if body:
        index = flip % len(body)
        changed = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]
        with pytest.raises(VerificationError):
            verifier.verify(changed, headers)


def test_the_receiver_shares_its_keys_through_the_state_redis(
    fal_client, redis_client, signer, job_id
):
    request_id = new_request_id()
    body = completion(request_id)
    post(fal_client, job_id, body, fal_headers(signer, body, request_id))

    shared = json.loads(redis_client.get("webhook_ingest:jwks:fal"))

    assert [key["x"] for key in shared["keys"]] == [jwk_of(signer)["x"]]

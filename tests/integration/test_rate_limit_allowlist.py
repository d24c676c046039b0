"""Receiver checks before the signature work (issue 4; CONTRACT.md §2-3, README "Security").

- `RATE_LIMIT` per provider + client address, counting verified deliveries only:
  over it 429 JSON with `Retry-After`;
- `UNVERIFIED_RATE_LIMIT`: refusals before and at verification per client, in the
  process's memory: a flood of forgeries gets 429s, costs no Redis command and
  spends nothing of the authentic deliveries' budget (issue 14, finding 5);
- `ADMIN_FAILURE_LIMIT`: repeated wrong operator tokens get 429 before the token
  is even compared;
- Redis down: nothing acknowledged that was not kept, never a 500;
- `WEBHOOK_IP_ALLOWLIST_<PROVIDER>`: 403 for other addresses, nothing written;
- `TRUSTED_PROXY_COUNT`: only the hops our proxies appended name the client, and the
  rate limit keys on that same client address;
- bearer / basic / URL-token checks on top of the Standard Webhooks signature.

Every app here is built from an explicit environment (conftest's `RATE_LIMIT` is
huge on purpose) on a redis-server of its own that is both the state store and the
broker, so "nothing written" also means "nothing enqueued".
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid

import pytest
import redis

from tests.conftest import OPENAI_SECRET, REPLICATE_SECRET
from tests.support import Receiver, environ_with, queued_in, seen_buckets, signed_headers
from webhook_ingest.config import ConfigError
from webhook_ingest.services import build_services

BEARER = "bt_" + secrets.token_urlsafe(24)
BEARER_OLD = "bt_" + secrets.token_urlsafe(24)
BASIC_USER = "hooks"
BASIC_PASSWORD = "pw_" + secrets.token_urlsafe(18)
URL_TOKEN = "ut" + secrets.token_urlsafe(24)
SECRETS = (REPLICATE_SECRET, OPENAI_SECRET, BEARER, BEARER_OLD, BASIC_PASSWORD, URL_TOKEN)


# -- deliveries -------------------------------------------------------------------------


def prediction() -> str:
    return json.dumps({"id": f"pred-{uuid.uuid4().hex[:8]}", "status": "starting"})


def openai_event() -> str:
    return json.dumps(
        {"id": f"evt_{uuid.uuid4().hex}", "type": "response.completed", "data": {"id": "resp_1"}}
    )


def deliver(
    app: Receiver,
    *,
    provider: str = "replicate",
    address: str = "192.0.2.1",
    path: str | None = None,
    extra_headers: dict[str, str] | None = None,
    signed: bool = True,
):
    """One fresh, correctly signed delivery from `address`; returns (response, headers)."""
    body = openai_event() if provider == "openai" else prediction()
    secret = OPENAI_SECRET if provider == "openai" else REPLICATE_SECRET
    headers = signed_headers(secret, body) if signed else {"content-type": "application/json"}
    headers.update(extra_headers or {})
    path = path or (
        f"/webhook/{provider}" if provider == "openai" else f"/webhook/{provider}/job-1"
    )
    response = app.client.post(
        path, data=body, headers=headers, environ_base={"REMOTE_ADDR": address}
    )
    return response, headers


def assert_json_error(response, status: int, sent_headers: dict[str, str] | None = None) -> None:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.is_json, response.content_type
    assert isinstance(response.get_json(), dict) and response.get_json().get("error")
    text = response.get_data(as_text=True)
    assert "Traceback" not in text
    for secret in SECRETS:
        assert secret not in text and secret.removeprefix("whsec_") not in text
    for value in (sent_headers or {}).values():
        if len(value) >= 16 and value not in ("application/json",):
            assert value not in text


def assert_rejected_without_writes(app: Receiver, status: int, **delivery) -> None:
    before = app.snapshot()
    queued = app.queued()
    response, headers = deliver(app, **delivery)
    assert_json_error(response, status, headers)
    assert app.snapshot() == before, "a rejected delivery wrote to Redis"
    assert app.queued() == queued


def assert_accepted(app: Receiver, **delivery) -> None:
    queued = app.queued()
    response, _ = deliver(app, **delivery)
    assert response.status_code == 202, (response.status_code, response.get_data(as_text=True))
    assert response.get_json() == {"received": True}
    assert app.queued() == queued + 1


# -- RATE_LIMIT -----------------------------------------------------------------------------


def test_the_sixth_delivery_in_a_minute_gets_429_with_an_integer_retry_after(receiver_with):
    app = receiver_with(RATE_LIMIT="5/minute")

    for _ in range(5):
        assert_accepted(app)
    before = app.snapshot()
    response, headers = deliver(app)

    assert_json_error(response, 429, headers)
    retry_after = response.headers.get("Retry-After", "")
    assert retry_after.isdigit() and int(retry_after) > 0, retry_after
    assert int(retry_after) <= 60
    assert app.queued() == 5, "a rate-limited delivery must not be enqueued"
    assert app.snapshot() == before


def test_other_providers_and_other_addresses_are_counted_separately(receiver_with):
    app = receiver_with(RATE_LIMIT="5/minute")
    for _ in range(5):
        assert_accepted(app, address="192.0.2.1")
    response, _ = deliver(app, address="192.0.2.1")
    assert response.status_code == 429

    # the same address, another provider: its own budget
    for _ in range(5):
        assert_accepted(app, provider="openai", address="192.0.2.1")
    # the same provider, another address: its own budget (IPv6 too)
    for _ in range(5):
        assert_accepted(app, address="192.0.2.2")
    for _ in range(5):
        assert_accepted(app, address="2001:db8::7")

    assert deliver(app, provider="openai", address="192.0.2.1")[0].status_code == 429
    assert deliver(app, address="192.0.2.2")[0].status_code == 429


def commands(app: Receiver) -> dict[str, int]:
    """Redis's own count of the commands it ran, by name (INFO commandstats)."""
    stats = app.raw.info("commandstats")
    return {name.removeprefix("cmdstat_"): row["calls"] for name, row in stats.items()}


def test_forgeries_spend_their_own_budget_not_the_authentic_deliveries(receiver_with):
    """Finding 5: unverified traffic from the provider's own address used to count
    towards RATE_LIMIT first, pushing authentic deliveries into 429 (18 of 20).

    Now 40 forgeries from that address get 401 until UNVERIFIED_RATE_LIMIT is spent,
    then 429 with Retry-After, without a single Redis command; the provider's five
    deliveries a minute are all accepted, and only its sixth is over RATE_LIMIT.
    """
    app = receiver_with(RATE_LIMIT="5/minute", UNVERIFIED_RATE_LIMIT="10/minute")
    before = commands(app)

    forged = [deliver(app, signed=False)[0] for _ in range(40)]

    ran = {name: n - before.get(name, 0) for name, n in commands(app).items()}
    ran = {name: n for name, n in ran.items() if n and name != "info"}
    assert ran == {}, f"unverified requests ran Redis commands: {ran}"
    statuses = [r.status_code for r in forged]
    assert statuses == [401] * 10 + [429] * 30, statuses
    for response in forged[10:]:
        assert_json_error(response, 429)
        assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert app.queued() == 0

    for _ in range(5):
        assert_accepted(app)
    response, headers = deliver(app)
    assert_json_error(response, 429, headers)
    assert response.get_json()["error"] == "too many requests"


def test_a_verified_delivery_is_accepted_while_its_address_is_over_the_unverified_limit(
    receiver_with,
):
    """Behind a proxy with TRUSTED_PROXY_COUNT=0 every client has the proxy's
    address: a stranger spending it must not stop the provider."""
    app = receiver_with(UNVERIFIED_RATE_LIMIT="2/minute")
    for _ in range(5):
        deliver(app, signed=False)
    assert deliver(app, signed=False)[0].status_code == 429

    assert_accepted(app)
    assert_accepted(app, provider="openai")
    assert deliver(app, signed=False)[0].status_code == 429


@pytest.mark.parametrize(
    "refused",
    [
        {"provider": "nope", "path": "/webhook/nope/job-1"},
        {"path": "/webhook/replicate/bad%20id"},
        {"address": "192.0.2.1", "signed": False},
    ],
    ids=["unknown-provider", "invalid-job-id", "bad-signature"],
)
def test_every_refusal_before_verification_spends_the_unverified_budget(receiver_with, refused):
    app = receiver_with(UNVERIFIED_RATE_LIMIT="3/minute", RATE_LIMIT="5/minute")
    first = [deliver(app, **refused)[0].status_code for _ in range(3)]
    over = deliver(app, **refused)[0]

    assert 429 not in first, first
    assert_json_error(over, 429)
    assert over.get_json()["error"] == "too many unverified requests"
    assert_accepted(app, address=refused.get("address", "192.0.2.1"))


def test_the_unverified_budget_is_per_client_address(receiver_with):
    app = receiver_with(UNVERIFIED_RATE_LIMIT="2/minute")
    for _ in range(3):
        deliver(app, signed=False, address="192.0.2.1")

    assert deliver(app, signed=False, address="192.0.2.1")[0].status_code == 429
    assert deliver(app, signed=False, address="192.0.2.2")[0].status_code == 401
    assert deliver(app, signed=False, address="2001:db8::7")[0].status_code == 401


def test_a_retry_of_an_accepted_delivery_is_a_duplicate_even_over_the_limit(receiver_with):
    """RATE_LIMIT counts new deliveries: a provider retrying one it got no answer
    for must learn that it was kept, however busy the window."""
    app = receiver_with(RATE_LIMIT="1/minute")
    body = prediction()
    headers = signed_headers(REPLICATE_SECRET, body)

    def post():
        return app.client.post(
            "/webhook/replicate/job-1",
            data=body,
            headers=headers,
            environ_base={"REMOTE_ADDR": "192.0.2.1"},  # deliver()'s address
        )

    assert post().status_code == 202
    assert deliver(app)[0].status_code == 429
    again = post()
    assert again.status_code == 200 and again.get_json()["duplicate"] is True


@pytest.mark.parametrize("variable", ["RATE_LIMIT", "UNVERIFIED_RATE_LIMIT", "ADMIN_FAILURE_LIMIT"])
@pytest.mark.parametrize("value", ["lots", "5/fortnight", "1/second;10/minute"])
def test_an_invalid_rate_limit_stops_the_start_naming_the_variable(private_redis, variable, value):
    environ = environ_with(REDIS_URL=private_redis.url, **{variable: value})

    with pytest.raises(ConfigError, match=variable):
        build_services(environ=environ)


# -- ADMIN_FAILURE_LIMIT ------------------------------------------------------------------------


def operator_get(app: Receiver, token: str, address: str = "192.0.2.1"):
    return app.client.get(
        "/jobs/job-1",
        headers={"Authorization": f"Bearer {token}"},
        environ_base={"REMOTE_ADDR": address},
    )


def test_repeated_wrong_operator_tokens_get_429_before_the_token_is_compared(receiver_with):
    """Finding 5: 2,000 wrong admin tokens went through in 3.3 s. Now a client
    gets ADMIN_FAILURE_LIMIT 401s, then 429s — the right token included, so a
    guesser learns nothing more until the budget refills; other addresses are
    not affected."""
    app = receiver_with(ADMIN_FAILURE_LIMIT="3/minute")
    right = app.services.settings.admin_token

    wrong = [operator_get(app, f"guess-{n:04d}").status_code for n in range(3)]
    over = operator_get(app, "guess-9999")
    right_but_throttled = operator_get(app, right)

    assert wrong == [401, 401, 401]
    for response in (over, right_but_throttled):
        assert_json_error(response, 429)
        assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert operator_get(app, right, address="192.0.2.2").status_code in (200, 404)
    assert operator_get(app, "guess-0000", address="192.0.2.2").status_code == 401


def test_a_right_operator_token_spends_nothing(receiver_with):
    app = receiver_with(ADMIN_FAILURE_LIMIT="2/minute")
    right = app.services.settings.admin_token

    answers = [operator_get(app, right).status_code for _ in range(10)]

    assert set(answers) <= {200, 404}, answers
    assert operator_get(app, "guess").status_code == 401


# -- the limiter's Redis down -------------------------------------------------------------------


def test_with_redis_down_nothing_is_acknowledged_and_nothing_gets_a_500(receiver_with, own_redis):
    """REDIS_URL holds the RATE_LIMIT counters, the claims and (here) the broker.

    With it down, the hand-off's script (claim, journal, counter, queue) cannot
    run: every signed delivery gets 503 with Retry-After and the provider retries
    — never a 2xx, never a 500, never a 429 for a limit nobody could count.
    """
    app = receiver_with(redis_url=own_redis.url, RATE_LIMIT="5/minute")
    assert_accepted(app, address="198.51.100.1")  # working before the outage
    own_redis.stop()

    answers = [deliver(app, address="198.51.100.2")[0] for _ in range(8)]

    for response in answers:
        assert_json_error(response, response.status_code)
    statuses = [r.status_code for r in answers]
    assert statuses == [503] * 8, statuses
    assert all(r.headers.get("Retry-After", "").isdigit() for r in answers)


def test_limiter_and_state_down_with_a_working_broker_is_503_from_the_claim_not_429_or_500(
    receiver_with, own_redis, private_redis
):
    """RATE_LIMIT's counter lives at REDIS_URL with the claims and the journal, in
    the same script. With that Redis down and a separate broker up, the claim
    script fails and the answer is 503 "state store unavailable" — not 429, not
    500, and nothing reaches the working broker, because a delivery that could
    not be claimed and journaled could not be de-duplicated or redriven either.
    """
    broker = redis.Redis.from_url(private_redis.url)
    broker.flushall()
    app = receiver_with(
        redis_url=own_redis.url, broker_url=private_redis.url, RATE_LIMIT="5/minute"
    )
    own_redis.stop()

    response, headers = deliver(app)

    assert_json_error(response, 503, headers)
    assert "state store" in response.get_json()["error"]
    assert queued_in(broker) == 0, "nothing may be enqueued without a claim"

    own_redis.start()  # same port: the same app recovers without a restart
    response, _ = deliver(app)
    assert response.status_code == 202, response.get_data(as_text=True)
    assert queued_in(broker) == 1
    broker.close()


# -- IP allowlist -------------------------------------------------------------------------------

ALLOWLIST = "10.0.0.0/8, 2001:db8::/32"


@pytest.mark.parametrize("address", ["192.0.2.1", "2001:db9::1", "11.0.0.1", "::ffff:192.0.2.1"])
def test_an_address_outside_the_allowlist_gets_403_and_nothing_is_written(receiver_with, address):
    app = receiver_with(WEBHOOK_IP_ALLOWLIST_REPLICATE=ALLOWLIST)

    assert_rejected_without_writes(app, 403, address=address)


@pytest.mark.parametrize("address", ["10.1.2.3", "2001:db8::5", "::ffff:10.1.2.3"])
def test_an_address_inside_the_allowlist_is_accepted(receiver_with, address):
    app = receiver_with(WEBHOOK_IP_ALLOWLIST_REPLICATE=ALLOWLIST)

    assert_accepted(app, address=address)


def test_the_allowlist_is_per_provider(receiver_with):
    app = receiver_with(WEBHOOK_IP_ALLOWLIST_REPLICATE=ALLOWLIST)

    assert_accepted(app, provider="openai", address="192.0.2.1")
    assert_rejected_without_writes(app, 403, provider="replicate", address="192.0.2.1")


def test_the_allowlist_is_checked_before_the_signature(receiver_with):
    """An unsigned request from outside is 403, not 401: no signature work for it."""
    app = receiver_with(WEBHOOK_IP_ALLOWLIST_REPLICATE=ALLOWLIST)

    assert_rejected_without_writes(app, 403, address="192.0.2.1", signed=False)
    assert_rejected_without_writes(app, 401, address="10.1.2.3", signed=False)


def test_an_invalid_allowlist_stops_the_start_naming_the_variable(private_redis):
    environ = environ_with(
        REDIS_URL=private_redis.url, WEBHOOK_IP_ALLOWLIST_REPLICATE="10.0.0.0/8, nope"
    )

    with pytest.raises(ConfigError, match="WEBHOOK_IP_ALLOWLIST_REPLICATE"):
        build_services(environ=environ)


# -- behind proxies ------------------------------------------------------------------------------

PROXY = "172.16.0.1"  # our load balancer, not in the allowlist


def test_without_trusted_proxies_a_spoofed_forwarded_for_changes_nothing(receiver_with):
    app = receiver_with(WEBHOOK_IP_ALLOWLIST_REPLICATE=ALLOWLIST, TRUSTED_PROXY_COUNT="0")

    assert_rejected_without_writes(
        app, 403, address="192.0.2.1", extra_headers={"X-Forwarded-For": "10.1.2.3"}
    )


def test_with_one_trusted_proxy_the_address_it_appended_is_the_client(receiver_with):
    app = receiver_with(WEBHOOK_IP_ALLOWLIST_REPLICATE=ALLOWLIST, TRUSTED_PROXY_COUNT="1")

    assert_accepted(app, address=PROXY, extra_headers={"X-Forwarded-For": "10.1.2.3"})


def test_with_one_trusted_proxy_only_the_last_hop_counts(receiver_with):
    """The client wrote `10.1.2.3`; our proxy appended the address it saw, 192.0.2.9."""
    app = receiver_with(WEBHOOK_IP_ALLOWLIST_REPLICATE=ALLOWLIST, TRUSTED_PROXY_COUNT="1")

    assert_rejected_without_writes(
        app, 403, address=PROXY, extra_headers={"X-Forwarded-For": "10.1.2.3, 192.0.2.9"}
    )


def test_with_one_trusted_proxy_and_no_forwarded_for_the_peer_is_the_client(receiver_with):
    app = receiver_with(WEBHOOK_IP_ALLOWLIST_REPLICATE=ALLOWLIST, TRUSTED_PROXY_COUNT="1")

    assert_rejected_without_writes(app, 403, address=PROXY)
    assert_accepted(app, address="10.1.2.3")


def test_behind_a_proxy_the_rate_limit_keys_on_the_forwarded_client(receiver_with):
    """Every delivery arrives from the proxy; the limit must count each client apart."""
    app = receiver_with(
        WEBHOOK_IP_ALLOWLIST_REPLICATE=ALLOWLIST, TRUSTED_PROXY_COUNT="1", RATE_LIMIT="5/minute"
    )
    client_a = {"X-Forwarded-For": "10.1.2.3"}
    client_b = {"X-Forwarded-For": "10.1.2.4"}

    for _ in range(5):
        assert_accepted(app, address=PROXY, extra_headers=client_a)
    response, _ = deliver(app, address=PROXY, extra_headers=client_a)
    assert_json_error(response, 429)

    for _ in range(5):
        assert_accepted(app, address=PROXY, extra_headers=client_b)


def test_without_trusted_proxies_a_forged_forwarded_for_does_not_evade_the_limit(receiver_with):
    app = receiver_with(TRUSTED_PROXY_COUNT="0", RATE_LIMIT="5/minute")

    for index in range(5):
        assert_accepted(app, extra_headers={"X-Forwarded-For": f"10.0.0.{index}"})
    response, _ = deliver(app, extra_headers={"X-Forwarded-For": "10.0.0.99"})

    assert_json_error(response, 429)


# -- bearer / basic on top of the signature -------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def bearer_app(receiver_with):
    return receiver_with(WEBHOOK_BEARER_TOKEN_REPLICATE=f"{BEARER} {BEARER_OLD}")


@pytest.mark.parametrize("token", [BEARER, BEARER_OLD], ids=["new-token", "old-token"])
def test_signature_and_either_bearer_token_of_a_rotation_are_accepted(bearer_app, token):
    assert_accepted(bearer_app, extra_headers=bearer(token))


@pytest.mark.parametrize(
    ("signed", "authorization"),
    [
        (True, {}),
        (False, bearer(BEARER)),
        (True, bearer(BEARER[:-1] + ("x" if BEARER[-1] != "x" else "y"))),
        (True, bearer(BEARER + "x")),
        (True, {"Authorization": BEARER}),
        (True, basic(BASIC_USER, BEARER)),
    ],
    ids=[
        "signature-only",
        "token-only",
        "wrong-token",
        "token-with-suffix",
        "no-scheme",
        "basic-instead",
    ],
)
def test_bearer_and_signature_are_both_needed(bearer_app, signed, authorization):
    assert_rejected_without_writes(bearer_app, 401, signed=signed, extra_headers=authorization)


def test_a_bearer_token_under_16_characters_stops_the_start(private_redis):
    environ = environ_with(
        REDIS_URL=private_redis.url, WEBHOOK_BEARER_TOKEN_REPLICATE="short-token"
    )

    with pytest.raises(ConfigError, match="WEBHOOK_BEARER_TOKEN_REPLICATE") as raised:
        build_services(environ=environ)
    assert "short-token" not in str(raised.value)


@pytest.mark.parametrize("variable", ["WEBHOOK_BEARER_TOKEN_REPLICATE", "WEBHOOK_URL_TOKEN_RUNPOD"])
@pytest.mark.parametrize(
    "token", ["change-me-to-a-long-token", "aaaaaaaaaaaaaaaaaaaaaaaa", "abcdefghijklmnopqrstuvwx"]
)
def test_a_sample_or_patterned_shared_token_stops_the_start(private_redis, variable, token):
    """Long enough is not enough: the ADMIN_TOKEN rules (webhook_ingest.weak_tokens)
    hold for every shared token a stranger could guess, second place of a rotation too."""
    environ = environ_with(REDIS_URL=private_redis.url, **{variable: f"{BEARER} {token}"})

    with pytest.raises(ConfigError, match=variable) as raised:
        build_services(environ=environ)
    assert token not in str(raised.value) and BEARER not in str(raised.value)


@pytest.fixture
def basic_app(receiver_with):
    return receiver_with(WEBHOOK_BASIC_AUTH_REPLICATE=f"{BASIC_USER}:{BASIC_PASSWORD}")


def test_signature_and_basic_credentials_are_accepted(basic_app):
    assert_accepted(basic_app, extra_headers=basic(BASIC_USER, BASIC_PASSWORD))


@pytest.mark.parametrize(
    ("signed", "authorization"),
    [
        (True, {}),
        (False, basic(BASIC_USER, BASIC_PASSWORD)),
        (True, basic(BASIC_USER, BASIC_PASSWORD + "x")),
        (True, basic("other", BASIC_PASSWORD)),
        (True, {"Authorization": "Basic !!!not-base64!!!"}),
        (True, bearer(BASIC_PASSWORD)),
    ],
    ids=[
        "signature-only",
        "credentials-only",
        "wrong-password",
        "wrong-user",
        "malformed",
        "bearer-instead",
    ],
)
def test_basic_and_signature_are_both_needed(basic_app, signed, authorization):
    assert_rejected_without_writes(basic_app, 401, signed=signed, extra_headers=authorization)


def test_bearer_and_basic_together_stop_the_start_naming_both(private_redis):
    environ = environ_with(
        REDIS_URL=private_redis.url,
        WEBHOOK_BEARER_TOKEN_REPLICATE=BEARER,
        WEBHOOK_BASIC_AUTH_REPLICATE=f"{BASIC_USER}:{BASIC_PASSWORD}",
    )

    with pytest.raises(ConfigError) as raised:
        build_services(environ=environ)
    message = str(raised.value)
    assert "WEBHOOK_BEARER_TOKEN_REPLICATE" in message
    assert "WEBHOOK_BASIC_AUTH_REPLICATE" in message
    assert BEARER not in message and BASIC_PASSWORD not in message


# -- URL token ----------------------------------------------------------------------


@pytest.fixture
def url_token_app(receiver_with):
    return receiver_with(WEBHOOK_URL_TOKEN_REPLICATE=URL_TOKEN)


def test_signed_delivery_to_the_url_with_the_token_is_accepted(url_token_app):
    assert_accepted(url_token_app, path=f"/webhook/replicate/job-1/{URL_TOKEN}")


@pytest.mark.parametrize(
    "path",
    [
        f"/webhook/replicate/job-1/{URL_TOKEN[:-1]}",
        f"/webhook/replicate/job-1/{URL_TOKEN}x",
        f"/webhook/replicate/job-1/{URL_TOKEN.upper()}",
        "/webhook/replicate/job-1",
        "/webhook/replicate",
    ],
    ids=["truncated", "suffixed", "other-case", "missing-per-job", "missing-project-url"],
)
def test_a_wrong_or_missing_url_token_is_401(url_token_app, path):
    assert_rejected_without_writes(url_token_app, 401, path=path)


def test_the_url_token_and_the_signature_are_both_needed(url_token_app):
    assert_rejected_without_writes(
        url_token_app, 401, path=f"/webhook/replicate/job-1/{URL_TOKEN}", signed=False
    )


def test_a_token_segment_for_a_provider_without_url_tokens_is_404(url_token_app):
    assert_rejected_without_writes(
        url_token_app, 404, provider="openai", path=f"/webhook/openai/job-1/{URL_TOKEN}"
    )


def test_the_url_token_is_not_in_the_claim_keys(url_token_app):
    """The delivery id is the signed webhook-id: the token travels no further than the URL."""
    response, headers = deliver(url_token_app, path=f"/webhook/replicate/job-1/{URL_TOKEN}")

    assert response.status_code == 202
    stored = url_token_app.raw.keys("*")
    assert seen_buckets(url_token_app.raw, "replicate", headers["webhook-id"], "job-1")
    for key in stored:
        assert URL_TOKEN.encode() not in key
        if url_token_app.raw.type(key) == b"list":
            for item in url_token_app.raw.lrange(key, 0, -1):
                assert URL_TOKEN.encode() not in item

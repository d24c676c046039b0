"""The generic HMAC verifier (webhook_ingest.verification.hmac_signature), option by option.

Signatures are made here with Python's `hmac` the way each provider documents
it (GitHub: `sha256=` + hex HMAC-SHA256 of the body; Slack: `v0=` + hex of
`v0:{timestamp}:{body}`; Shopify: base64 of the body's HMAC), never with the
code under test. Time is passed as `now=`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook_ingest.config import ConfigError
from webhook_ingest.verification import HmacOptions, HmacVerifier, VerificationError, Verified

NOW = 1_750_000_000
TOLERANCE = 300
SECRET = "gh-" + secrets.token_hex(20)
OLD_SECRET = "gh-" + secrets.token_hex(20)
BODY = b'{"action": "completed", "workflow_run": {"id": 30433642, "conclusion": "success"}}'
VARIABLE = "WEBHOOK_SECRET_ACME"

GITHUB = HmacOptions(
    signature_header="X-Hub-Signature-256",
    prefix="sha256=",
    delivery_id_header="X-GitHub-Delivery",
)
SLACK = HmacOptions(
    signature_header="X-Slack-Signature",
    prefix="v0=",
    timestamp_header="X-Slack-Request-Timestamp",
    signed_content="v0:{timestamp}:{body}",
)
SHOPIFY = HmacOptions(signature_header="X-Shopify-Hmac-Sha256", encoding="base64")


def verifier(options: HmacOptions = GITHUB, secrets_text: str = SECRET) -> HmacVerifier:
    return HmacVerifier.from_env(options, {VARIABLE: secrets_text}, VARIABLE, TOLERANCE)


def mac(secret: str, content: bytes, algorithm=hashlib.sha256) -> bytes:
    return hmac.new(secret.encode(), content, algorithm).digest()


def github_headers(body: bytes = BODY, secret: str = SECRET, delivery: str | None = None):
    """As GitHub documents it: X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the payload>."""
    return {
        "X-Hub-Signature-256": "sha256=" + mac(secret, body).hex(),
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-GitHub-Event": "workflow_run",
        "Content-Type": "application/json",
    }


def slack_headers(body: bytes = BODY, at: int = NOW, secret: str = SECRET, signed_at=None):
    """As Slack documents it: v0= + hex HMAC-SHA256 of `v0:{timestamp}:{body}`."""
    signed_at = at if signed_at is None else signed_at
    base = b"v0:%d:%s" % (signed_at, body)
    return {
        "X-Slack-Signature": "v0=" + mac(secret, base).hex(),
        "X-Slack-Request-Timestamp": str(at),
    }


# -- GitHub style: prefix, hex, delivery id -------------------------------------------


def test_a_github_signature_is_accepted_and_its_unsigned_delivery_id_is_not_the_id():
    # Issue 15: X-GitHub-Delivery is not signed, so anyone holding one captured
    # delivery could send it again under fresh ids, each passing as new. With no
    # id the receiver de-duplicates on a digest of the body, which is signed.
    headers = github_headers(delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")

    verified = verifier().verify(BODY, headers, now=NOW)

    assert verified == Verified(delivery_id=None, timestamp=None)


def test_github_s_documented_example_verifies():
    # docs.github.com "Validating webhook deliveries": the secret "It's a Secret to
    # Everybody" and the payload "Hello, World!" give this header.
    options = HmacOptions(signature_header="X-Hub-Signature-256", prefix="sha256=")
    documented = HmacVerifier(options, [b"It's a Secret to Everybody"], TOLERANCE)
    signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

    verified = documented.verify(b"Hello, World!", {"X-Hub-Signature-256": signature})

    assert verified == Verified(delivery_id=None, timestamp=None)


def test_header_names_are_case_insensitive():
    headers = {name.lower(): value for name, value in signed_id_headers("d-1").items()}

    assert verifier(SIGNED_ID).verify(BODY, headers, now=NOW) == Verified("d-1", NOW)


def test_hex_digits_may_be_upper_case():
    headers = github_headers()
    headers["X-Hub-Signature-256"] = "sha256=" + mac(SECRET, BODY).hex().upper()

    verified = verifier().verify(BODY, headers, now=NOW)

    assert verified == Verified(delivery_id=None, timestamp=None)


def test_without_a_delivery_id_header_the_delivery_has_no_id():
    # the receiver then de-duplicates on a digest of the body
    headers = github_headers()
    del headers["X-GitHub-Delivery"]

    assert verifier().verify(BODY, headers, now=NOW) == Verified(delivery_id=None, timestamp=None)


def test_without_a_prefix_the_header_is_the_bare_signature():
    options = HmacOptions(signature_header="X-Signature")
    headers = {"X-Signature": mac(SECRET, BODY).hex()}

    assert verifier(options).verify(BODY, headers, now=NOW) == Verified(None, None)
    with pytest.raises(VerificationError):
        verifier(options).verify(BODY, {"X-Signature": "sha256=" + mac(SECRET, BODY).hex()})


# -- algorithm and encoding -------------------------------------------------------------


def test_sha512_signatures():
    options = HmacOptions(signature_header="X-Signature", algorithm="sha512", prefix="sha512=")
    headers = {"X-Signature": "sha512=" + mac(SECRET, BODY, hashlib.sha512).hex()}

    assert verifier(options).verify(BODY, headers, now=NOW) == Verified(None, None)


def test_a_sha256_signature_does_not_pass_for_sha512():
    options = HmacOptions(signature_header="X-Signature", algorithm="sha512")
    headers = {"X-Signature": mac(SECRET, BODY).hex()}

    with pytest.raises(VerificationError, match="malformed signature"):
        verifier(options).verify(BODY, headers, now=NOW)


def test_base64_signatures_shopify_style():
    headers = {"X-Shopify-Hmac-Sha256": base64.b64encode(mac(SECRET, BODY)).decode()}

    assert verifier(SHOPIFY).verify(BODY, headers, now=NOW) == Verified(None, None)


def test_a_hex_signature_is_not_accepted_where_base64_is_configured():
    headers = {"X-Shopify-Hmac-Sha256": mac(SECRET, BODY).hex()}

    with pytest.raises(VerificationError):
        verifier(SHOPIFY).verify(BODY, headers, now=NOW)


# -- tampering ----------------------------------------------------------------------


def test_a_changed_body_is_rejected():
    headers = github_headers()
    tampered = BODY.replace(b"success", b"failure")

    with pytest.raises(VerificationError, match="no matching signature"):
        verifier().verify(tampered, headers, now=NOW)


def test_a_signature_made_with_another_secret_is_rejected():
    with pytest.raises(VerificationError, match="no matching signature"):
        verifier().verify(BODY, github_headers(secret="another-secret-0123456789"), now=NOW)


def test_the_body_is_checked_as_raw_bytes_not_as_reserialized_json():
    body = b'{"b": 1,   "a": "\\u00e9"}'
    headers = github_headers(body=body)

    verified = verifier().verify(body, headers, now=NOW)
    assert verified == Verified(delivery_id=None, timestamp=None)
    with pytest.raises(VerificationError):
        verifier().verify(b'{"b":1,"a":"\xc3\xa9"}', headers, now=NOW)


# -- timestamps ---------------------------------------------------------------------


def test_a_slack_signature_with_a_fresh_timestamp_is_accepted():
    verified = verifier(SLACK).verify(BODY, slack_headers(), now=NOW)

    assert verified == Verified(delivery_id=None, timestamp=NOW)


def test_the_default_signed_content_with_a_timestamp_is_timestamp_dot_body():
    options = HmacOptions(signature_header="X-Signature", timestamp_header="X-Timestamp")
    headers = {
        "X-Signature": mac(SECRET, b"%d.%s" % (NOW, BODY)).hex(),
        "X-Timestamp": str(NOW),
    }

    assert verifier(options).verify(BODY, headers, now=NOW) == Verified(None, NOW)


@pytest.mark.parametrize("skew", [-TOLERANCE, TOLERANCE], ids=["past-edge", "future-edge"])
def test_a_timestamp_at_the_edge_of_the_tolerance_is_accepted(skew):
    verified = verifier(SLACK).verify(BODY, slack_headers(at=NOW + skew), now=NOW)

    assert verified == Verified(delivery_id=None, timestamp=NOW + skew)


@pytest.mark.parametrize("skew", [-TOLERANCE - 1, TOLERANCE + 1], ids=["too-old", "too-new"])
def test_a_timestamp_outside_the_tolerance_is_rejected_both_ways(skew):
    with pytest.raises(VerificationError, match="timestamp outside tolerance"):
        verifier(SLACK).verify(BODY, slack_headers(at=NOW + skew), now=NOW)


def test_a_replayed_signature_with_a_new_timestamp_is_rejected():
    # captured at NOW - 1000, resent with a fresh timestamp header
    headers = slack_headers(at=NOW, signed_at=NOW - 1000)

    with pytest.raises(VerificationError, match="no matching signature"):
        verifier(SLACK).verify(BODY, headers, now=NOW)


@pytest.mark.parametrize(
    ("timestamp", "reason"),
    [(None, "missing timestamp header"), ("", "missing timestamp header"), ("17e8", "invalid")],
    ids=["absent", "empty", "not-digits"],
)
def test_a_missing_or_malformed_timestamp_is_rejected(timestamp, reason):
    headers = slack_headers()
    if timestamp is None:
        del headers["X-Slack-Request-Timestamp"]
    else:
        headers["X-Slack-Request-Timestamp"] = timestamp

    with pytest.raises(VerificationError, match=reason):
        verifier(SLACK).verify(BODY, headers, now=NOW)


# -- the delivery id in the signed content ----------------------------------------------

SIGNED_ID = HmacOptions(
    signature_header="X-Signature",
    timestamp_header="X-Timestamp",
    delivery_id_header="X-Delivery",
    signed_content="{delivery_id}.{timestamp}.{body}",
)


def signed_id_headers(delivery: str, signed_delivery: str | None = None):
    content = b"%s.%d.%s" % ((signed_delivery or delivery).encode(), NOW, BODY)
    return {
        "X-Signature": mac(SECRET, content).hex(),
        "X-Timestamp": str(NOW),
        "X-Delivery": delivery,
    }


def test_a_signed_delivery_id_is_accepted():
    verified = verifier(SIGNED_ID).verify(BODY, signed_id_headers("d-1"), now=NOW)

    assert verified == Verified(delivery_id="d-1", timestamp=NOW)


def test_a_signed_delivery_id_cannot_be_changed():
    with pytest.raises(VerificationError, match="no matching signature"):
        verifier(SIGNED_ID).verify(BODY, signed_id_headers("d-2", signed_delivery="d-1"), now=NOW)


def test_a_signed_delivery_id_must_be_sent():
    headers = signed_id_headers("d-1")
    del headers["X-Delivery"]

    with pytest.raises(VerificationError, match="missing delivery id"):
        verifier(SIGNED_ID).verify(BODY, headers, now=NOW)


@pytest.mark.parametrize(
    "delivery",
    ["x" * 201, "line\nbreak", "caf\u00e9"],
    ids=["too-long", "control-char", "non-ascii"],
)
def test_an_invalid_delivery_id_is_rejected(delivery):
    headers = signed_id_headers(delivery)

    with pytest.raises(VerificationError, match="invalid delivery id"):
        verifier(SIGNED_ID).verify(BODY, headers, now=NOW)


# -- rotation -----------------------------------------------------------------------


@pytest.mark.parametrize("signing_secret", [SECRET, OLD_SECRET], ids=["new", "old"])
def test_during_a_rotation_either_secret_is_accepted(signing_secret):
    rotating = verifier(secrets_text=f"{SECRET}  {OLD_SECRET}")
    headers = github_headers(secret=signing_secret)

    verified = rotating.verify(BODY, headers, now=NOW)

    assert verified == Verified(delivery_id=None, timestamp=None)


def test_after_a_rotation_the_dropped_secret_is_rejected():
    with pytest.raises(VerificationError):
        verifier(secrets_text=SECRET).verify(BODY, github_headers(secret=OLD_SECRET), now=NOW)


# -- malformed signature headers --------------------------------------------------------

VALID = "sha256=" + mac(SECRET, BODY).hex()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing signature header"),
        ("", "missing signature header"),
        ("   ", "missing signature header"),
        ("sha1=" + hashlib.sha1(BODY).hexdigest(), "malformed signature"),  # noqa: S324
        (VALID.removeprefix("sha256="), "malformed signature"),
        ("sha256=" + "z" * 64, "malformed signature"),
        ("sha256=" + mac(SECRET, BODY).hex()[:-1], "malformed signature"),
        ("sha256=" + mac(SECRET, BODY).hex()[:-2], "malformed signature"),
        ("sha256=" + "\u0660" * 64, "malformed signature"),
        ("sha256=" + "ab" * 10_000, "malformed signature"),
        ("SHA256=" + mac(SECRET, BODY).hex(), "malformed signature"),
    ],
    ids=[
        "absent",
        "empty",
        "blank",
        "sha1",
        "no-prefix",
        "not-hex",
        "odd-length",
        "short",
        "non-ascii-digits",
        "huge",
        "prefix-case",
    ],
)
def test_a_malformed_signature_header_is_rejected(value, reason):
    headers = github_headers()
    if value is None:
        del headers["X-Hub-Signature-256"]
    else:
        headers["X-Hub-Signature-256"] = value

    with pytest.raises(VerificationError, match=reason):
        verifier().verify(BODY, headers, now=NOW)


@pytest.mark.parametrize("value", ["not base64!", "YWJj", "=" * 44], ids=["chars", "short", "pad"])
def test_a_malformed_base64_signature_is_rejected(value):
    with pytest.raises(VerificationError, match="malformed signature"):
        verifier(SHOPIFY).verify(BODY, {"X-Shopify-Hmac-Sha256": value}, now=NOW)


@pytest.mark.parametrize(
    "name", ["X-Slack-Signature", "X-Slack-Request-Timestamp"], ids=["signature", "timestamp"]
)
def test_a_lone_surrogate_in_a_header_is_a_verification_error(name):
    headers = slack_headers()
    headers[name] = headers[name][:-1] + "\ud800"

    with pytest.raises(VerificationError):
        verifier(SLACK).verify(BODY, headers, now=NOW)


def test_a_lone_surrogate_in_a_signed_delivery_id_is_a_verification_error():
    with pytest.raises(VerificationError, match="invalid delivery id"):
        verifier(SIGNED_ID).verify(
            BODY, signed_id_headers("d-\udc80", signed_delivery="d-1"), now=NOW
        )


def test_reasons_never_contain_the_secret_or_the_signature():
    reasons = []
    for headers in (
        github_headers(secret="wrong-secret-0123456789"),
        {},
        {"X-Hub-Signature-256": "x"},
    ):
        with pytest.raises(VerificationError) as caught:
            verifier().verify(b"{}", headers, now=NOW)
        reasons.append(caught.value.reason)

    text = " ".join(reasons)
    assert SECRET not in text
    assert mac(SECRET, b"{}").hex() not in text
    assert "sha256=" not in text


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_missing_secrets_are_a_config_error_naming_the_variable(value):
    environ = {} if value is None else {VARIABLE: value}

    with pytest.raises(ConfigError, match=VARIABLE):
        HmacVerifier.from_env(GITHUB, environ, VARIABLE, TOLERANCE)


def test_a_short_secret_is_a_config_error_that_does_not_show_it():
    short = "tooShort9"

    with pytest.raises(ConfigError, match=VARIABLE) as caught:
        HmacVerifier.from_env(GITHUB, {VARIABLE: f"{SECRET} {short}"}, VARIABLE, TOLERANCE)

    assert short not in str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (HmacOptions(signature_header=""), "signature_header"),
        (HmacOptions(signature_header="X-S", algorithm="md5"), "algorithm"),
        (HmacOptions(signature_header="X-S", encoding="base32"), "encoding"),
        (HmacOptions(signature_header="X-S", signed_content="{timestamp}"), "signed_content"),
        (HmacOptions(signature_header="X-S", signed_content="{body}{body}"), "signed_content"),
        (HmacOptions(signature_header="X-S", signed_content="{body}.{id}"), "signed_content"),
        (HmacOptions(signature_header="X-S", signed_content="{body!r}"), "signed_content"),
        (HmacOptions(signature_header="X-S", signed_content="{body"), "signed_content"),
        # an unsigned timestamp would be checked for nothing
        (
            HmacOptions(signature_header="X-S", timestamp_header="X-T", signed_content="{body}"),
            "signed_content",
        ),
        (
            HmacOptions(signature_header="X-S", signed_content="{timestamp}.{body}"),
            "signed_content",
        ),
        (
            HmacOptions(signature_header="X-S", signed_content="{delivery_id}{body}"),
            "signed_content",
        ),
    ],
    ids=[
        "no-header",
        "md5",
        "base32",
        "no-body",
        "body-twice",
        "unknown-placeholder",
        "conversion",
        "unbalanced",
        "unsigned-timestamp",
        "timestamp-without-header",
        "delivery-id-without-header",
    ],
)
def test_unusable_options_are_named_and_refused(options, field):
    assert field in options.problems()
    with pytest.raises(ValueError, match=field):
        HmacVerifier(options, [SECRET.encode()], TOLERANCE)


def test_literal_braces_in_the_signed_content_are_allowed():
    options = HmacOptions(signature_header="X-S", signed_content="{{v1}}:{body}")
    headers = {"X-S": mac(SECRET, b"{v1}:" + BODY).hex()}

    assert verifier(options).verify(BODY, headers, now=NOW) == Verified(None, None)


# -- properties ---------------------------------------------------------------------

HEADER_NAMES = (
    "X-Hub-Signature-256",
    "x-hub-signature-256",
    "X-GitHub-Delivery",
    "X-Slack-Signature",
    "X-Slack-Request-Timestamp",
    "X-Delivery",
    "X-Timestamp",
    "X-Signature",
)
plausible_values = st.one_of(
    st.text(max_size=200),
    # lone surrogates included: a header that is not even encodable is still a 401
    st.text(st.characters(exclude_categories=()), max_size=80),
    st.binary(min_size=0, max_size=80).map(lambda raw: "sha256=" + raw.hex()),
    st.binary(min_size=0, max_size=80).map(lambda raw: "v0=" + raw.hex()),
    st.integers(min_value=-(10**15), max_value=10**15).map(str),
    st.just(str(NOW)),
    st.none() | st.integers(),  # not even text: a caller's mistake must still be a 401
)
arbitrary_headers = st.dictionaries(
    st.sampled_from(HEADER_NAMES) | st.text(max_size=30), plausible_values, max_size=8
)
ALL_OPTIONS = [GITHUB, SLACK, SHOPIFY, SIGNED_ID]


@settings(max_examples=400, deadline=None)
@given(
    body=st.binary(max_size=2048),
    headers=arbitrary_headers,
    options=st.sampled_from(ALL_OPTIONS),
)
def test_arbitrary_bodies_and_headers_only_ever_raise_verification_error(body, headers, options):
    try:
        verifier(options).verify(body, headers, now=NOW)
    except VerificationError as exc:
        assert exc.reason and "\n" not in exc.reason
        assert SECRET not in exc.reason
    else:
        raise AssertionError("a delivery nobody signed was accepted")


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=2048), flip=st.integers(min_value=0))
def test_any_signed_body_verifies_and_any_changed_byte_does_not(body, flip):
    headers = github_headers(body=body)

    verified = verifier().verify(body, headers, now=NOW)
    assert verified == Verified(delivery_id=None, timestamp=None)
    if body:
        index = flip % len(body)
        changed = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]
        with pytest.raises(VerificationError):
            verifier().verify(changed, headers, now=NOW)

"""Standard Webhooks verification (providers.md; contract §2 WEBHOOK_SECRET_*, §3 401 rows).

Every signature here is made by the `standardwebhooks` package (through
`tests.support.signed_headers`), so the verifier is checked against what OpenAI's
and Replicate's senders produce, not against itself. Time is passed as `now=`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import pytest

from tests.support import signed_headers
from webhook_ingest.config import ConfigError
from webhook_ingest.verification import StandardWebhooksVerifier, VerificationError, Verified

NOW = 1_750_000_000  # a fixed "current time" in Unix seconds
TOLERANCE = 300
BODY = '{"id": "abc123", "status": "succeeded", "output": ["https://example.com/a.png"]}'
VARIABLE = "WEBHOOK_SECRET_ACME"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


SECRET = new_secret()
OLD_SECRET = new_secret()


def verifier(secrets: str = SECRET, tolerance: int = TOLERANCE) -> StandardWebhooksVerifier:
    return StandardWebhooksVerifier.from_secrets(secrets, VARIABLE, tolerance)


def headers_for(body: str = BODY, secret: str = SECRET, msg_id: str = "msg_1", at: int = NOW):
    return signed_headers(secret, body, msg_id=msg_id, timestamp=at)


# -- accepted ------------------------------------------------------------------


def test_a_standardwebhooks_signature_is_accepted_and_the_delivery_id_is_the_webhook_id():
    headers = headers_for(msg_id="msg_2Yh1Lq")

    verified = verifier().verify(BODY.encode(), headers, now=NOW)

    assert verified.delivery_id == "msg_2Yh1Lq"
    assert verified.timestamp == NOW


@pytest.mark.parametrize("signing_secret", [SECRET, OLD_SECRET], ids=["new", "old"])
def test_during_a_rotation_either_configured_secret_is_accepted(signing_secret):
    rotating = verifier(f"{SECRET} {OLD_SECRET}")

    verified = rotating.verify(BODY.encode(), headers_for(secret=signing_secret), now=NOW)

    assert verified == Verified(delivery_id="msg_1", timestamp=NOW)


def test_a_header_with_several_signatures_is_accepted_when_one_matches():
    ours = headers_for()["webhook-signature"]
    someone_elses = headers_for(secret=new_secret())["webhook-signature"]
    future_scheme = "v2," + ours.split(",", 1)[1]
    headers = headers_for()
    headers["webhook-signature"] = f"{someone_elses} {future_scheme} {ours}"

    assert verifier().verify(BODY.encode(), headers, now=NOW) == Verified("msg_1", NOW)


@pytest.mark.parametrize(
    "join",
    [", ", ",", " , "],
    ids=["werkzeug", "gunicorn", "spaced"],
)
@pytest.mark.parametrize("ours_first", [True, False], ids=["ours-first", "ours-second"])
def test_two_header_lines_joined_by_a_server_are_each_tried(join, ours_first):
    # Two `webhook-signature` lines reach the app as one value joined with a comma
    # (RFC 9110), each line a `v1,<sig>` pair of its own.
    ours = headers_for()["webhook-signature"]
    someone_elses = headers_for(secret=new_secret())["webhook-signature"]
    lines = [ours, someone_elses] if ours_first else [someone_elses, ours]
    headers = {**headers_for(), "webhook-signature": join.join(lines)}

    assert verifier().verify(BODY.encode(), headers, now=NOW) == Verified("msg_1", NOW)


def test_an_asymmetric_signature_beside_ours_is_skipped():
    ours = headers_for()["webhook-signature"]
    v1a = "v1a," + base64.b64encode(os.urandom(64)).decode()
    headers = {**headers_for(), "webhook-signature": f"{v1a} {ours}"}

    assert verifier().verify(BODY.encode(), headers, now=NOW) == Verified("msg_1", NOW)


NON_ASCII_IDS = ["msg_ünïcødé", "msg_日本語", "msg_🚀"]


@pytest.mark.parametrize("msg_id", NON_ASCII_IDS)
def test_a_non_ascii_webhook_id_as_a_wsgi_server_passes_it_on_verifies(msg_id):
    """Signed as UTF-8, sent as UTF-8, handed to the app as latin-1 text (PEP 3333);
    the delivery id is the text that was signed."""
    headers = headers_for(msg_id=msg_id)
    on_the_wire = {**headers, "webhook-id": msg_id.encode().decode("latin-1")}

    assert verifier().verify(BODY.encode(), on_the_wire, now=NOW) == Verified(msg_id, NOW)


@pytest.mark.parametrize("msg_id", NON_ASCII_IDS)
def test_a_non_ascii_webhook_id_already_decoded_verifies(msg_id):
    """A client that sent the id as latin-1 (Python's http.client does for `é`), or a
    server that decoded it already: the text is what was signed."""
    assert verifier().verify(BODY.encode(), headers_for(msg_id=msg_id), now=NOW) == Verified(
        msg_id, NOW
    )


def test_a_secret_without_the_whsec_prefix_is_accepted_as_raw_base64():
    raw = base64.b64encode(os.urandom(24)).decode()

    verified = verifier(raw).verify(BODY.encode(), headers_for(secret=raw), now=NOW)

    assert verified == Verified(delivery_id="msg_1", timestamp=NOW)


def test_a_non_utf8_body_is_verified_on_its_raw_bytes():
    # standardwebhooks signs `str` only, so for bytes that are not UTF-8 the signature
    # is computed here with its algorithm: base64(HMAC-SHA256(key, f"{id}.{ts}.".encode() + body)).
    body = b'{"note": "\xff\xfe not utf-8 \xc3"}'
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    digest = hmac.new(key, b"msg_raw.%d." % NOW + body, hashlib.sha256).digest()
    headers = {
        "webhook-id": "msg_raw",
        "webhook-timestamp": str(NOW),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }

    assert verifier().verify(body, headers, now=NOW) == Verified("msg_raw", NOW)


def test_the_manual_signature_above_agrees_with_standardwebhooks_on_utf8_bodies():
    # Guards the hand-made signature of the previous test: same algorithm, same result.
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    digest = hmac.new(key, f"msg_1.{NOW}.{BODY}".encode(), hashlib.sha256).digest()

    assert headers_for()["webhook-signature"] == "v1," + base64.b64encode(digest).decode()


# -- rejected: not signed by us ---------------------------------------------------


def tampered_body(headers):
    return BODY.replace("succeeded", "succeedee").encode(), headers


def tampered_id(headers):
    return BODY.encode(), {**headers, "webhook-id": "msg_2"}


def tampered_timestamp(headers):
    return BODY.encode(), {**headers, "webhook-timestamp": str(NOW + 1)}


def wrong_secret(_headers):
    return BODY.encode(), headers_for(secret=new_secret())


@pytest.mark.parametrize(
    "tamper",
    [wrong_secret, tampered_body, tampered_id, tampered_timestamp],
    ids=lambda f: f.__name__,
)
def test_a_delivery_not_signed_with_a_configured_secret_is_rejected(tamper):
    body, headers = tamper(headers_for())
    assert len(body) == len(BODY.encode())  # tampering changes one byte, not the length

    with pytest.raises(VerificationError) as error:
        verifier().verify(body, headers, now=NOW)

    assert headers["webhook-signature"].split(",", 1)[1] not in str(error.value)


# -- rejected: replay window -------------------------------------------------------


@pytest.mark.parametrize(
    ("age_seconds", "accepted"),
    [
        (TOLERANCE + 1, False),  # too old
        (-(TOLERANCE + 1), False),  # too new (sender's clock ahead)
        (TOLERANCE - 1, True),
        (-(TOLERANCE - 1), True),
        (0, True),
    ],
)
def test_the_signed_timestamp_must_be_within_the_tolerance_either_way(age_seconds, accepted):
    headers = headers_for(at=NOW - age_seconds)

    if accepted:
        verified = verifier().verify(BODY.encode(), headers, now=NOW)
        assert verified == Verified(delivery_id="msg_1", timestamp=NOW - age_seconds)
    else:
        with pytest.raises(VerificationError):
            verifier().verify(BODY.encode(), headers, now=NOW)


@pytest.mark.parametrize(
    ("age_seconds", "accepted"), [(9, True), (-9, True), (11, False), (-11, False)]
)
def test_a_custom_tolerance_is_honoured(age_seconds, accepted):
    strict = verifier(tolerance=10)
    headers = headers_for(at=NOW - age_seconds)

    if accepted:
        verified = strict.verify(BODY.encode(), headers, now=NOW)
        assert verified == Verified(delivery_id="msg_1", timestamp=NOW - age_seconds)
    else:
        with pytest.raises(VerificationError):
            strict.verify(BODY.encode(), headers, now=NOW)


# -- rejected: malformed input raises VerificationError and nothing else ------------


def without(name):
    return lambda headers: {k: v for k, v in headers.items() if k != name}


def with_value(name, value):
    return lambda headers: {**headers, name: value}


def signature_digest(headers):
    return headers["webhook-signature"].split(",", 1)[1]


MALFORMED = {
    "no webhook-id": without("webhook-id"),
    "no webhook-timestamp": without("webhook-timestamp"),
    "no webhook-signature": without("webhook-signature"),
    "empty webhook-id": with_value("webhook-id", ""),
    "empty webhook-timestamp": with_value("webhook-timestamp", ""),
    "empty webhook-signature": with_value("webhook-signature", ""),
    "blank webhook-signature": with_value("webhook-signature", "   "),
    "no headers at all": lambda headers: {},
    "signature without comma": lambda h: {**h, "webhook-signature": "v1" + signature_digest(h)},
    "signature not base64": with_value("webhook-signature", "v1,not-base64!!"),
    "only a v2 signature": lambda h: {**h, "webhook-signature": "v2," + signature_digest(h)},
    "empty v1 signature": with_value("webhook-signature", "v1,"),
    "timestamp with a letter": with_value("webhook-timestamp", "12a"),
    "timestamp NaN": with_value("webhook-timestamp", "NaN"),
    "timestamp in exponent form": with_value("webhook-timestamp", "1e9"),
    "timestamp negative": with_value("webhook-timestamp", "-1"),
    "timestamp with fraction": with_value("webhook-timestamp", f"{NOW}.5"),
    "timestamp huge": with_value("webhook-timestamp", "9" * 400),
    "timestamp in non-ASCII digits": with_value("webhook-timestamp", "١٧٥٠٠٠٠٠٠٠"),
}


@pytest.mark.parametrize("malform", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_headers_raise_only_verification_error(malform):
    headers = malform(headers_for())

    with pytest.raises(VerificationError):
        verifier().verify(BODY.encode(), headers, now=NOW)


# -- configuration -------------------------------------------------------------------


@pytest.mark.parametrize("value", ["whsec_!!!", "", "   ", "whsec_", f"{SECRET} whsec_!!!"])
def test_a_bad_secret_is_a_config_error_naming_the_variable(value):
    with pytest.raises(ConfigError, match=VARIABLE):
        StandardWebhooksVerifier.from_secrets(value, VARIABLE, TOLERANCE)


def test_a_config_error_does_not_echo_the_secret():
    bad = "whsec_s3cr3t!!"
    with pytest.raises(ConfigError) as error:
        StandardWebhooksVerifier.from_secrets(bad, VARIABLE, TOLERANCE)

    assert "s3cr3t" not in str(error.value)

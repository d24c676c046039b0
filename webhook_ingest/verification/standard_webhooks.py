"""Standard Webhooks, checked on the raw body bytes.

Standard Webhooks (OpenAI, Replicate): HMAC-SHA256 over
`{webhook-id}.{webhook-timestamp}.{raw body}` with the base64 key after `whsec_`,
signatures `v1,<base64>` separated by spaces (or commas, where a server joined two
header lines), the id any text, signed as UTF-8. Several configured secrets are
tried so a rotation never drops a delivery. Written here rather than calling
`standardwebhooks.Webhook.verify` because that decodes the body as text, fixes
the tolerance at five minutes and raises arbitrary errors on malformed headers;
tests sign with the `standardwebhooks` package, so the two must agree.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence

from webhook_ingest.config import ConfigError
from webhook_ingest.verification.base import (
    VerificationError,
    Verified,
    check_delivery_id,
    check_timestamp,
    header_id,
    matches_any,
)

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format marker, not a secret
MAX_SIGNATURES = 10  # a rotation needs two or three; more is a probe
# The spec's list is space-delimited; a server that receives two header lines
# joins them with a comma (RFC 9110: gunicorn "a,b", werkzeug "a, b").
_SEPARATORS = re.compile(r"[\s,]+")


def signature_candidates(header: str) -> list[str]:
    """The base64 part of every `v1,<signature>` in the header, in order.

    Split on spaces and commas alike, a `v1` token is followed by its signature;
    other versions (`v1a`, an asymmetric signature) are skipped with theirs.
    """
    tokens = [token for token in _SEPARATORS.split(header) if token]
    pairs = zip(tokens, tokens[1:], strict=False)
    return [signature for version, signature in pairs if version == "v1"][:MAX_SIGNATURES]


def decode_secret(secret: str, variable: str) -> bytes:
    """`whsec_<base64>` → key bytes; a bad secret is a start-up error, not a 401 later."""
    raw = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{variable}: a secret is not whsec_<base64>") from None
    if not key:
        raise ConfigError(f"{variable}: a secret is empty")
    return key


class StandardWebhooksVerifier:
    scheme = "standard-webhooks"

    def __init__(self, keys: Sequence[bytes], tolerance_seconds: int) -> None:
        if not keys:
            raise ValueError("at least one key")
        self._keys = tuple(keys)
        self._tolerance = tolerance_seconds

    @classmethod
    def from_secrets(cls, value: str, variable: str, tolerance_seconds: int):
        keys = [decode_secret(secret, variable) for secret in value.split()]
        if not keys:
            raise ConfigError(f"{variable}: no secret given")
        return cls(keys, tolerance_seconds)

    def verify(
        self,
        body: bytes,
        headers: Mapping[str, str],
        *,
        url_token: str | None = None,
        job_id: str | None = None,
        now: float | None = None,
    ) -> Verified:
        header = headers.get("webhook-id", "")
        timestamp_text = headers.get("webhook-timestamp", "")
        signatures = headers.get("webhook-signature", "")
        if not (header and timestamp_text and signatures):
            raise VerificationError("missing signature headers")
        signed_id, msg_id = header_id(header)  # the spec allows any id, UTF-8 signed
        check_delivery_id(msg_id)
        timestamp = check_timestamp(timestamp_text, self._tolerance, now)

        signed = b"%s.%s.%s" % (signed_id, timestamp_text.encode(), body)
        expected = [hmac.new(key, signed, hashlib.sha256).digest() for key in self._keys]
        for encoded in signature_candidates(signatures):
            try:
                given = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                continue
            if matches_any(given, expected):
                return Verified(delivery_id=msg_id, timestamp=timestamp)
        raise VerificationError("no matching signature")

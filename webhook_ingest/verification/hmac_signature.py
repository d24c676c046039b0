"""A generic HMAC signature, for providers that sign with a shared secret their own way.

Most signing providers are variations of one idea: an HMAC of the raw body (and
sometimes a timestamp or the delivery id) with a shared secret, hex or base64,
in a header of their choosing, perhaps behind a prefix. For example:

- GitHub: `X-Hub-Signature-256: sha256=<hex>`, so `prefix: "sha256="`; its
  delivery id (`X-GitHub-Delivery`) is not signed, so the body de-duplicates.
- Slack: `X-Slack-Signature: v0=<hex>` over `v0:{timestamp}:{body}`, timestamp in
  `X-Slack-Request-Timestamp`.
- Shopify: `X-Shopify-Hmac-Sha256: <base64>` of the body.

The signed content is a template of `{body}` (the raw bytes, never re-encoded),
`{timestamp}` (as sent) and `{delivery_id}` (as sent). A timestamp is only worth
checking when it is signed, so a timestamp header requires `{timestamp}` in the
template and is then held to the tolerance both ways (replay protection).

Not covered: signatures and timestamps packed into one header (Stripe's
`t=…,v1=…`), several signatures in one header, millisecond timestamps.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from webhook_ingest.config import ConfigError
from webhook_ingest.verification.base import (
    VerificationError,
    Verified,
    check_delivery_id,
    check_timestamp,
    matches_any,
)

ALGORITHMS: dict[str, Callable] = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
ENCODINGS = ("hex", "base64")
PLACEHOLDERS = ("body", "timestamp", "delivery_id")
# A shorter shared secret can be brute-forced offline from one captured delivery.
MIN_SECRET_LENGTH = 16
# A hex SHA-512 plus any prefix fits easily; longer is not a signature, so not decoded.
MAX_SIGNATURE_HEADER_LENGTH = 512


@dataclass(frozen=True)
class HmacOptions:
    """How one provider signs. `signed_content` None means `{body}`, or
    `{timestamp}.{body}` when there is a timestamp header."""

    signature_header: str
    algorithm: str = "sha256"
    encoding: str = "hex"
    prefix: str = ""
    timestamp_header: str | None = None
    signed_content: str | None = None
    delivery_id_header: str | None = None

    @property
    def template(self) -> str:
        if self.signed_content is not None:
            return self.signed_content
        return "{timestamp}.{body}" if self.timestamp_header else "{body}"

    def problems(self) -> dict[str, str]:
        """What is wrong, by option name (empty when the options are usable), so a
        configuration loader can name the field."""
        problems = {}
        if not self.signature_header:
            problems["signature_header"] = "a header name is required"
        if self.algorithm not in ALGORITHMS:
            problems["algorithm"] = f"must be one of {', '.join(ALGORITHMS)}"
        if self.encoding not in ENCODINGS:
            problems["encoding"] = f"must be one of {', '.join(ENCODINGS)}"
        template_problem = self._template_problem()
        if template_problem:
            problems["signed_content"] = template_problem
        return problems

    def _template_problem(self) -> str | None:
        try:
            fields = [field for _, field in parse_template(self.template) if field is not None]
        except ValueError as exc:
            return str(exc)
        if fields.count("body") != 1:
            return "must contain {body} exactly once"
        # An unsigned timestamp proves nothing: anyone can set it to now.
        if bool(self.timestamp_header) != ("timestamp" in fields):
            return "contains {timestamp} if and only if timestamp_header is set"
        if "delivery_id" in fields and not self.delivery_id_header:
            return "{delivery_id} needs delivery_id_header"
        return None


def parse_template(template: str) -> list[tuple[str, str | None]]:
    """(literal text, placeholder or None) pairs; ValueError for anything but the
    known placeholders (no format specs: the parts are bytes, not Python values)."""
    parts = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"not a template: {exc}") from None
    for literal, field, spec, conversion in parsed:
        if field is not None and (field not in PLACEHOLDERS or spec or conversion):
            known = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
            raise ValueError(f"unknown placeholder {{{field}}}: use {known}")
        parts.append((literal, field))
    return parts


def secrets_from_env(environ: Mapping[str, str], variable: str) -> list[bytes]:
    """The configured secrets (space separated during a rotation), as key bytes.

    Messages name the variable and never show a value.
    """
    secrets = environ.get(variable, "").split()
    if not secrets:
        raise ConfigError(f"{variable}: not set; it holds the HMAC secret(s), space separated")
    if any(len(secret) < MIN_SECRET_LENGTH for secret in secrets):
        raise ConfigError(f"{variable}: secrets must be at least {MIN_SECRET_LENGTH} characters")
    return [secret.encode() for secret in secrets]


def header(headers: Mapping[str, str], name: str) -> str:
    """A header's value, "" when absent. Header names are case-insensitive; the
    receiver's headers already are, a plain dict (tests, other callers) is not."""
    value = headers.get(name)
    if value is None:
        wanted = name.lower()
        value = next(
            (v for k, v in headers.items() if isinstance(k, str) and k.lower() == wanted), None
        )
    return value if isinstance(value, str) else ""


class HmacVerifier:
    scheme = "hmac"

    def __init__(self, options: HmacOptions, keys: Sequence[bytes], tolerance_seconds: int):
        problems = options.problems()
        if problems:
            raise ValueError("; ".join(f"{name}: {text}" for name, text in problems.items()))
        if not keys:
            raise ValueError("at least one key")
        self.options = options
        self._keys = tuple(keys)
        self._tolerance = tolerance_seconds
        self._digest = ALGORITHMS[options.algorithm]
        self._digest_size = self._digest().digest_size
        self._template = parse_template(options.template)
        self._signs_delivery_id = any(field == "delivery_id" for _, field in self._template)

    @classmethod
    def from_env(
        cls,
        options: HmacOptions,
        environ: Mapping[str, str],
        variable: str,
        tolerance_seconds: int,
    ) -> HmacVerifier:
        return cls(options, secrets_from_env(environ, variable), tolerance_seconds)

    def verify(
        self,
        body: bytes,
        headers: Mapping[str, str],
        *,
        url_token: str | None = None,
        job_id: str | None = None,
        now: float | None = None,
    ) -> Verified:
        # Cheap refusals first: a malformed or stale delivery costs no HMAC.
        given = self._signature(headers)
        timestamp_text, timestamp = self._timestamp(headers, now)
        delivery_id = self._delivery_id(headers)
        content = self._signed_content(body, timestamp_text, delivery_id)
        expected = [hmac.new(key, content, self._digest).digest() for key in self._keys]
        if not matches_any(given, expected):
            raise VerificationError("no matching signature")
        return Verified(delivery_id=delivery_id, timestamp=timestamp)

    def _signature(self, headers: Mapping[str, str]) -> bytes:
        value = header(headers, self.options.signature_header).strip()
        if not value:
            raise VerificationError("missing signature header")
        prefix = self.options.prefix
        if len(value) > MAX_SIGNATURE_HEADER_LENGTH or not value.startswith(prefix):
            raise VerificationError("malformed signature")
        decoded = _decode(value[len(prefix) :], self.options.encoding)
        if decoded is None or len(decoded) != self._digest_size:
            raise VerificationError("malformed signature")
        return decoded

    def _timestamp(self, headers: Mapping[str, str], now: float | None):
        if not self.options.timestamp_header:
            return None, None
        text = header(headers, self.options.timestamp_header)
        if not text:
            raise VerificationError("missing timestamp header")
        return text, check_timestamp(text, self._tolerance, now)

    def _delivery_id(self, headers: Mapping[str, str]) -> str | None:
        """The delivery id when the signature covers it; None otherwise, and the
        receiver de-duplicates on a digest of the body.

        An id the signature does not cover proves nothing: a captured delivery
        sent again under a fresh id (GitHub's `X-GitHub-Delivery` is not signed)
        would pass as new. The body is what is signed, so the body is the id.
        """
        if not self.options.delivery_id_header or not self._signs_delivery_id:
            return None
        value = header(headers, self.options.delivery_id_header)
        if not value:
            return None
        # ASCII: it may be part of the signed bytes, which must be exactly what was sent.
        if not value.isascii():
            raise VerificationError("invalid delivery id")
        return check_delivery_id(value)

    def _signed_content(self, body: bytes, timestamp: str | None, delivery_id: str | None):
        values = {"body": body, "timestamp": timestamp, "delivery_id": delivery_id}
        parts = []
        for literal, field in self._template:
            parts.append(literal.encode())
            if field is None:
                continue
            value = values[field]
            if value is None:  # only {delivery_id}: the timestamp was required above
                raise VerificationError("missing delivery id header")
            parts.append(value if isinstance(value, bytes) else value.encode("ascii"))
        return b"".join(parts)


def _decode(text: str, encoding: str) -> bytes | None:
    if not text.isascii():
        return None
    try:
        if encoding == "hex":
            return bytes.fromhex(text)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None

"""What every verification scheme shares: its error, its result, its shape.

A verifier proves a delivery authentic from the raw body bytes, the headers and
(for providers that sign nothing) a secret token in the URL, which may be bound
to the job id of the same URL (`job_id`). It raises only
`VerificationError`, whose `reason` is safe to show, log and count: it never
contains a secret, a token or a signature.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

MAX_DELIVERY_ID_LENGTH = 200  # ids become Redis keys


class VerificationError(Exception):
    """The delivery is not proven authentic. `reason` is safe to show and count."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class VerificationUnavailable(Exception):
    """The delivery cannot be checked right now (e.g. the provider's public keys
    could not be fetched): the receiver answers 503 so the provider retries."""


@dataclass(frozen=True)
class Verified:
    """Proof of authenticity, and what the proof says about the delivery.

    `delivery_id` is None when the scheme carries no id (bearer, basic, a URL
    token): the receiver then derives one from the body.
    """

    delivery_id: str | None = None
    timestamp: int | None = None


class Verifier(Protocol):
    scheme: str

    def verify(
        self,
        body: bytes,
        headers: Mapping[str, str],
        *,
        url_token: str | None = None,
        job_id: str | None = None,
        now: float | None = None,
    ) -> Verified: ...


def check_delivery_id(value: str) -> str:
    if not value or len(value) > MAX_DELIVERY_ID_LENGTH or not value.isprintable():
        raise VerificationError("invalid delivery id")
    return value


def header_id(value: str) -> tuple[bytes, str]:
    """(the bytes a signer signed, the text the id is kept as) for an id header.

    Standard Webhooks signers sign the id's UTF-8 bytes. A WSGI server hands a
    header over as the latin-1 text of the bytes on the wire (PEP 3333), so those
    bytes come back with latin-1 and are read as UTF-8. A value that is no such
    text (a client that put latin-1 on the wire, e.g. Python's http.client, or
    text already decoded) is taken as it reads, and signed as its UTF-8.
    """
    try:
        raw = value.encode("latin-1")
        return raw, raw.decode("utf-8")
    except UnicodeError:
        pass
    try:
        return value.encode("utf-8"), value
    except UnicodeEncodeError:  # a lone surrogate: nothing could have signed it
        raise VerificationError("invalid delivery id") from None


def check_timestamp(text: str, tolerance_seconds: int, now: float | None = None) -> int:
    """Unix seconds as sent, within tolerance both ways (replay protection)."""
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise VerificationError("invalid timestamp")
    timestamp = int(text)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise VerificationError("timestamp outside tolerance")
    return timestamp


def matches_any(given: bytes, candidates: Sequence[bytes]) -> bool:
    """Constant-time comparison against every candidate, so timing says nothing
    about which one matched or how close a guess came."""
    results = [hmac.compare_digest(given, candidate) for candidate in candidates]
    return any(results)


def body_digest(body: bytes) -> str:
    """The delivery id of a scheme without one: the same body is the same delivery."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


class AllOf:
    """Every configured check must pass (e.g. a signature and a bearer token).

    The delivery id and timestamp come from the first check that has them.
    """

    def __init__(self, verifiers: Sequence[Verifier]) -> None:
        if not verifiers:
            raise ValueError("at least one verifier")
        self.verifiers = tuple(verifiers)
        self.scheme = "+".join(v.scheme for v in self.verifiers)

    def verify(self, body, headers, *, url_token=None, job_id=None, now=None) -> Verified:
        delivery_id = timestamp = None
        for verifier in self.verifiers:
            proof = verifier.verify(body, headers, url_token=url_token, job_id=job_id, now=now)
            delivery_id = delivery_id or proof.delivery_id
            timestamp = timestamp or proof.timestamp
        return Verified(delivery_id=delivery_id, timestamp=timestamp)

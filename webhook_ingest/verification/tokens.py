"""Shared-secret schemes: a bearer token, HTTP basic auth, a token in the URL path.

Weaker than a signature (a token proves who sent the request, not what it says,
and carries no timestamp against replays), so a provider uses them only when it
signs nothing, or in addition to a signature. Every comparison is constant time
against every configured token, so a rotation (several tokens) leaks nothing.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence

from webhook_ingest.config import ConfigError
from webhook_ingest.verification.base import VerificationError, Verified, matches_any

MIN_TOKEN_LENGTH = 16  # shorter secrets are guessable over the internet


def _as_bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate cannot be a configured token
        raise VerificationError("malformed token") from None


def _tokens(value: str, variable: str) -> list[bytes]:
    tokens = [token.encode() for token in value.split()]
    if not tokens:
        raise ConfigError(f"{variable}: no token given")
    if any(len(token) < MIN_TOKEN_LENGTH for token in tokens):
        raise ConfigError(f"{variable}: tokens must be at least {MIN_TOKEN_LENGTH} characters")
    return tokens


class BearerTokenVerifier:
    """`Authorization: Bearer <token>`, any of the configured tokens."""

    scheme = "bearer"

    def __init__(self, tokens: Sequence[bytes]) -> None:
        self._tokens = tuple(tokens)

    @classmethod
    def from_env(cls, value: str, variable: str) -> BearerTokenVerifier:
        return cls(_tokens(value, variable))

    def verify(
        self, body: bytes, headers: Mapping[str, str], *, url_token=None, now=None
    ) -> Verified:
        scheme, _, given = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise VerificationError("missing bearer token")
        if not matches_any(_as_bytes(given.strip()), self._tokens):
            raise VerificationError("invalid bearer token")
        return Verified()


class BasicAuthVerifier:
    """`Authorization: Basic base64(user:password)`, any of the configured pairs."""

    scheme = "basic"

    def __init__(self, credentials: Sequence[bytes]) -> None:
        self._credentials = tuple(credentials)

    @classmethod
    def from_env(cls, value: str, variable: str) -> BasicAuthVerifier:
        pairs = value.split()
        if not pairs or any(b":" not in pair.encode() for pair in pairs):
            raise ConfigError(f"{variable}: expected user:password (several separated by spaces)")
        return cls([pair.encode() for pair in pairs])

    def verify(
        self, body: bytes, headers: Mapping[str, str], *, url_token=None, now=None
    ) -> Verified:
        scheme, _, encoded = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic" or not encoded:
            raise VerificationError("missing basic credentials")
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise VerificationError("malformed basic credentials") from None
        if not matches_any(given, self._credentials):
            raise VerificationError("invalid basic credentials")
        return Verified()


class UrlTokenVerifier:
    """A secret token in the webhook URL's path (RunPod signs nothing).

    The token is part of the URL the provider was given, so it must never be
    logged: the receiver does not log paths, and gunicorn's access log is off.
    """

    scheme = "url-token"

    def __init__(self, tokens: Sequence[bytes]) -> None:
        self._tokens = tuple(tokens)

    @classmethod
    def from_env(cls, value: str, variable: str) -> UrlTokenVerifier:
        return cls(_tokens(value, variable))

    def verify(
        self, body: bytes, headers: Mapping[str, str], *, url_token=None, now=None
    ) -> Verified:
        if not url_token:
            raise VerificationError("missing URL token")
        if not matches_any(_as_bytes(url_token), self._tokens):
            raise VerificationError("invalid URL token")
        return Verified()

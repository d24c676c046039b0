"""Shared-secret schemes: a bearer token, HTTP basic auth, a token in the URL path.

Weaker than a signature (a token proves who sent the request, not what it says,
and carries no timestamp against replays), so a provider uses them only when it
signs nothing, or in addition to a signature. Every comparison is constant time
against every configured token, so a rotation (several tokens) leaks nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

from webhook_ingest.config import ConfigError
from webhook_ingest.verification.base import VerificationError, Verified, matches_any
from webhook_ingest.weak_tokens import weakness

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
    for token in value.split():
        # a sample copied from documentation, or a patterned string, is no secret
        # (the same rules as ADMIN_TOKEN's, webhook_ingest.weak_tokens)
        problem = weakness(token)
        if problem:
            raise ConfigError(f"{variable}: a token {problem}")
    return tokens


def shared_tokens(value: str, variable: str) -> list[bytes]:
    """Tokens that are the same for every request (bearer, a shared URL token)."""
    return _tokens(value, variable)


class BearerTokenVerifier:
    """`Authorization: Bearer <token>`, any of the configured tokens."""

    scheme = "bearer"

    def __init__(self, tokens: Sequence[bytes]) -> None:
        self._tokens = tuple(tokens)

    @classmethod
    def from_env(cls, value: str, variable: str) -> BearerTokenVerifier:
        return cls(_tokens(value, variable))

    def verify(
        self, body: bytes, headers: Mapping[str, str], *, url_token=None, job_id=None, now=None
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
        self, body: bytes, headers: Mapping[str, str], *, url_token=None, job_id=None, now=None
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


MIN_URL_SECRET_LENGTH = 32  # an HMAC key: at least 32 characters of randomness


def job_url_token(secret: bytes, job_id: str) -> str:
    """The URL token of one job: base64url (no padding) of HMAC-SHA256(secret, job id).

    43 characters of `A-Za-z0-9_-`, a valid path segment as is. Anyone holding it
    can post for that job only; without the secret no other job's token follows.
    """
    mac = hmac.new(secret, job_id.encode("utf-8", "surrogateescape"), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")


def url_secrets(value: str, variable: str) -> list[bytes]:
    """The per-job URL secrets of `variable`, validated: several during a rotation."""
    secrets = value.split()
    if not secrets:
        raise ConfigError(f"{variable}: no secret given")
    for secret in secrets:
        if len(secret) < MIN_URL_SECRET_LENGTH:
            raise ConfigError(
                f"{variable}: secrets must be at least {MIN_URL_SECRET_LENGTH} characters "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        if weakness(secret):
            raise ConfigError(f"{variable}: a secret {weakness(secret)}")
    return [secret.encode() for secret in secrets]


class UrlTokenVerifier:
    """A secret token in the webhook URL's path (RunPod signs nothing).

    Two kinds of token, either accepted:

    - per job (`secrets`, from WEBHOOK_URL_SECRET_<PROVIDER>): the token of
      `/webhook/<provider>/<job_id>/<token>` must be `job_url_token(secret, job_id)`
      for one of the secrets and the job id of the same URL, so a URL given out
      for one job proves nothing for another;
    - shared (`tokens`, from WEBHOOK_URL_TOKEN_<PROVIDER>): one token for every
      job, kept only as a migration path — whoever holds one URL can post for
      every job while it is configured.

    The token is part of the URL the provider was given, so it must never be
    logged: the receiver does not log paths, and gunicorn's access log is off.
    """

    scheme = "url-token"

    def __init__(self, tokens: Sequence[bytes] = (), secrets: Sequence[bytes] = ()) -> None:
        if not tokens and not secrets:
            raise ValueError("a URL token verifier needs tokens or secrets")
        self._tokens = tuple(tokens)
        self._secrets = tuple(secrets)

    @classmethod
    def from_env(cls, value: str, variable: str) -> UrlTokenVerifier:
        return cls(_tokens(value, variable))

    @property
    def per_job(self) -> bool:
        return bool(self._secrets)

    def token_for(self, job_id: str) -> str:
        """The token to put into the URL of `job_id`: per job under the first secret
        when one is configured, else the first shared token."""
        if self._secrets:
            return job_url_token(self._secrets[0], job_id)
        return self._tokens[0].decode()

    def verify(
        self, body: bytes, headers: Mapping[str, str], *, url_token=None, job_id=None, now=None
    ) -> Verified:
        if not url_token:
            raise VerificationError("missing URL token")
        candidates = list(self._tokens)
        if job_id:
            candidates += [job_url_token(secret, job_id).encode() for secret in self._secrets]
        if not matches_any(_as_bytes(url_token), candidates):
            raise VerificationError("invalid URL token")
        return Verified()

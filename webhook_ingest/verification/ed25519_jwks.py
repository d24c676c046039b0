"""Ed25519 signatures checked with public keys from a JWKS document (fal.ai).

fal signs `{request_id}\\n{user_id}\\n{timestamp}\\n{sha256 hex of the raw body}`
with Ed25519 and sends the parts in `X-Fal-Webhook-Request-Id`, `-User-Id`,
`-Timestamp` (Unix seconds) and `-Signature` (hex). The public keys are a JWKS
(`OKP`/`Ed25519`, `x` base64url) that fal rotates; the delivery names no key, so
any key of the set may match.

The keys must not cost a fetch per delivery, and a slow or broken key server must
not stall the receiver:

- each process keeps the key set in memory until it is `ttl` old;
- the JWKS text is shared through Redis (`webhook_ingest:jwks:<provider>`, expiring
  after `ttl`), so one fetch serves every process, and processes refresh together;
- only when neither cache has keys is the URL fetched, with a short timeout;
- a failed refresh keeps serving the keys we had, and is not retried for
  `refetch_interval`, so an outage costs one timeout per interval, not per request;
- a signature no key matches may mean a new key: the set is refetched, at most
  once per `refetch_interval` per process, so forged deliveries cannot turn the
  receiver into a load generator against the key server;
- with no keys at all, `VerificationUnavailable` (503): the provider retries later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import redis
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from webhook_ingest.config import ConfigError
from webhook_ingest.state import keys as redis_keys  # `keys` here are public keys
from webhook_ingest.verification.base import (
    MAX_DELIVERY_ID_LENGTH,
    VerificationError,
    VerificationUnavailable,
    Verified,
    check_delivery_id,
    check_timestamp,
)

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 3600
DEFAULT_REFETCH_SECONDS = 60
# Short: a request waiting for keys holds a web worker. Connect, read, and a
# wall-clock bound on the whole download (a server dripping bytes resets the read timeout).
FETCH_TIMEOUT = (1.0, 2.0)
FETCH_DEADLINE_SECONDS = 3.0
MAX_JWKS_BYTES = 64 * 1024  # a key set is a few hundred bytes; more is not a key set
MAX_KEYS = 20  # a rotation needs two or three
ED25519_SIGNATURE_BYTES = 64
ED25519_KEY_BYTES = 32

FAL_HEADERS = (
    "X-Fal-Webhook-Request-Id",
    "X-Fal-Webhook-User-Id",
    "X-Fal-Webhook-Timestamp",
    "X-Fal-Webhook-Signature",
)


class JwksError(Exception):
    """The key set could not be fetched or holds no usable key."""


# -- the document ----------------------------------------------------------------


def parse_jwks(text: str) -> tuple[Ed25519PublicKey, ...]:
    """The Ed25519 keys of a JWKS; other key types are skipped, not errors."""
    try:
        document = json.loads(text)
    except ValueError:
        raise JwksError("not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksError("no 'keys' list")
    found = [key for key in map(_ed25519_key, entries[:MAX_KEYS]) if key is not None]
    if not found:
        raise JwksError("no Ed25519 key")
    return tuple(found)


def _ed25519_key(entry: object) -> Ed25519PublicKey | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
        return None
    if entry.get("use", "sig") != "sig":  # an encryption key must not verify signatures
        return None
    x = entry.get("x")
    if not isinstance(x, str) or not x.isascii():
        return None
    try:
        raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
        return Ed25519PublicKey.from_public_bytes(raw) if len(raw) == ED25519_KEY_BYTES else None
    except (binascii.Error, ValueError):
        return None


def _fingerprint(keys: tuple[Ed25519PublicKey, ...]) -> frozenset[bytes]:
    return frozenset(key.public_bytes(Encoding.Raw, PublicFormat.Raw) for key in keys)


def check_jwks_url(url: str, variable: str) -> str:
    """https, or http to this machine only: keys fetched in the clear could be replaced
    on the way, and whoever supplies the keys decides which deliveries are authentic."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return url
    raise ConfigError(f"{variable}: expected an https:// URL (http only to localhost)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- the key cache ---------------------------------------------------------------


@dataclass(frozen=True)
class _KeySet:
    keys: tuple[Ed25519PublicKey, ...]
    fingerprint: frozenset[bytes]
    fresh_until: float  # on the cache's monotonic clock


class JwksCache:
    """One provider's public keys: in process, shared through Redis, fetched rarely.

    Thread-safe (gunicorn may run threads): one thread refreshes while the others
    keep using the keys they have, or wait when there are none.
    """

    def __init__(
        self,
        url: str,
        client: redis.Redis | None,
        provider: str,
        *,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        refetch_seconds: int = DEFAULT_REFETCH_SECONDS,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.provider = provider
        self._redis = client
        self._redis_key = redis_keys.jwks(provider)
        self._ttl = ttl_seconds
        self._refetch = refetch_seconds
        # No Authorization: the key set is public, and no API key should travel to it.
        self._session = session or requests.Session()
        self._clock = clock
        self._lock = threading.Lock()
        self._current: _KeySet | None = None
        self._no_fetch_until = float("-inf")  # after a failed fetch
        self._no_miss_refetch_until = float("-inf")  # after an unknown-key refetch

    def keys(self) -> tuple[Ed25519PublicKey, ...]:
        """The keys to verify with now. Raises VerificationUnavailable if there are none."""
        current = self._current
        if current is not None and self._clock() < current.fresh_until:
            return current.keys
        # With keys in hand, never wait for another thread's refresh: use what we have.
        if not self._lock.acquire(blocking=current is None):
            return current.keys
        try:
            return self._refresh().keys
        finally:
            self._lock.release()

    def refetch_for_unknown_key(
        self, tried: tuple[Ed25519PublicKey, ...]
    ) -> tuple[Ed25519PublicKey, ...] | None:
        """New keys after a signature none of `tried` matched, or None if there are none.

        Redis first (another process may have picked up the rotation already), then
        the URL, at most once per refetch interval.
        """
        with self._lock:
            current = self._current
            if current is not None and current.keys is not tried:
                return current.keys  # another thread refreshed meanwhile
            known = current.fingerprint if current is not None else frozenset()
            shared = self._load_shared()
            if shared is not None and shared.fingerprint != known:
                self._current = shared
                return shared.keys
            now = self._clock()
            if now < self._no_miss_refetch_until:
                return None
            self._no_miss_refetch_until = now + self._refetch
            fetched = self._fetch()
            if fetched is None or fetched.fingerprint == known:
                return None
            self._current = fetched
            return fetched.keys

    # -- refreshing (under the lock) ---------------------------------------------

    def _refresh(self) -> _KeySet:
        current = self._current
        now = self._clock()
        if current is not None and now < current.fresh_until:
            return current  # refreshed by the thread we waited for
        shared = self._load_shared()
        if shared is not None:
            self._current = shared
            return shared
        fetched = self._fetch() if now >= self._no_fetch_until else None
        if fetched is not None:
            self._current = fetched
            return fetched
        return self._stale(now)

    def _stale(self, now: float) -> _KeySet:
        """Keys we had, for one more interval; none at all means we cannot verify."""
        current = self._current
        if current is None:
            raise VerificationUnavailable(f"no {self.provider} public keys available")
        log.warning("serving stale %s public keys: refresh failed", self.provider)
        self._current = replace(current, fresh_until=now + self._refetch)
        return self._current

    def _load_shared(self) -> _KeySet | None:
        if self._redis is None:
            return None
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(self._redis_key)
                pipe.pttl(self._redis_key)
                text, ttl_ms = pipe.execute()
        except redis.RedisError:
            return None  # Redis is an optimisation here; the URL still works
        if not text:
            return None
        try:
            keys = parse_jwks(text)
        except JwksError:
            return None
        # Expire with the shared copy, so every process refreshes at about the same time.
        remaining = ttl_ms / 1000 if ttl_ms and ttl_ms > 0 else self._ttl
        return _KeySet(keys, _fingerprint(keys), self._clock() + min(remaining, self._ttl))

    def _fetch(self) -> _KeySet | None:
        """Download and parse the key set; on success share it, on failure hold off."""
        try:
            text = self._download()
            keys = parse_jwks(text)
        except JwksError as exc:
            self._no_fetch_until = self._clock() + self._refetch
            log.warning("fetching %s public keys failed: %s", self.provider, exc)
            return None
        self._no_fetch_until = float("-inf")
        self._share(text)
        return _KeySet(keys, _fingerprint(keys), self._clock() + self._ttl)

    def _download(self) -> str:
        deadline = time.monotonic() + FETCH_DEADLINE_SECONDS
        body = bytearray()
        try:
            with self._session.get(
                self.url,
                timeout=FETCH_TIMEOUT,
                stream=True,
                headers={"Accept": "application/json"},
            ) as response:
                if response.status_code != 200:
                    raise JwksError(f"answered HTTP {response.status_code}")
                for chunk in response.iter_content(8192):
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksError("document too large")
                    if time.monotonic() > deadline:
                        raise JwksError("download too slow")
        except requests.RequestException as exc:
            raise JwksError(type(exc).__name__) from None
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise JwksError("not UTF-8") from None

    def _share(self, text: str) -> None:
        if self._redis is None:
            return
        try:
            self._redis.set(self._redis_key, text, ex=self._ttl)
        except redis.RedisError:
            log.warning("could not share %s public keys through Redis", self.provider)


# -- the verifier ----------------------------------------------------------------


class Ed25519JwksVerifier:
    """fal's scheme by default; the header names are parameters for look-alikes."""

    scheme = "ed25519-jwks"

    def __init__(
        self,
        keys: JwksCache,
        tolerance_seconds: int,
        headers: tuple[str, str, str, str] = FAL_HEADERS,
        user_id: str | None = None,
    ) -> None:
        """`user_id`: the account deliveries must be for (fal's `FAL_USER_ID`), if
        set. fal signs every account's webhooks with the same keys, so a signature
        alone proves a delivery came from fal, not that it is about our requests."""
        self._keys = keys
        self._tolerance = tolerance_seconds
        self._request_id, self._user_id, self._timestamp, self._signature = headers
        self._expected_user_id = user_id

    def verify(
        self,
        body: bytes,
        headers: Mapping[str, str],
        *,
        url_token: str | None = None,
        job_id: str | None = None,
        now: float | None = None,
    ) -> Verified:
        # Everything that needs no key first: malformed or stale deliveries never
        # reach the key cache, let alone trigger a refetch.
        request_id, user_id, timestamp_text, signature = self._parts(headers)
        timestamp = check_timestamp(timestamp_text, self._tolerance, now)
        message = "\n".join(
            (request_id, user_id, timestamp_text, hashlib.sha256(body).hexdigest())
        ).encode()

        keys = self._keys.keys()
        if _any_verifies(keys, signature, message):
            return Verified(delivery_id=request_id, timestamp=timestamp)
        rotated = self._keys.refetch_for_unknown_key(keys)
        if rotated is not None and _any_verifies(rotated, signature, message):
            return Verified(delivery_id=request_id, timestamp=timestamp)
        raise VerificationError("no matching signature")

    def _parts(self, headers: Mapping[str, str]) -> tuple[str, str, str, bytes]:
        request_id = headers.get(self._request_id, "")
        user_id = headers.get(self._user_id, "")
        timestamp_text = headers.get(self._timestamp, "")
        signature_hex = headers.get(self._signature, "")
        if not (request_id and user_id and timestamp_text and signature_hex):
            raise VerificationError("missing signature headers")
        # ASCII only: the signed message is built from these exact characters.
        if not request_id.isascii():
            raise VerificationError("invalid delivery id")
        check_delivery_id(request_id)
        if len(user_id) > MAX_DELIVERY_ID_LENGTH or not (
            user_id.isascii() and user_id.isprintable()
        ):
            raise VerificationError("invalid user id")
        if self._expected_user_id is not None and user_id != self._expected_user_id:
            # Before any key is looked at: another account's delivery costs no refetch.
            raise VerificationError("delivery is for another user")
        if len(signature_hex) != 2 * ED25519_SIGNATURE_BYTES or not signature_hex.isascii():
            raise VerificationError("malformed signature")
        try:
            signature = bytes.fromhex(signature_hex)
        except ValueError:
            raise VerificationError("malformed signature") from None
        return request_id, user_id, timestamp_text, signature


def _any_verifies(keys: tuple[Ed25519PublicKey, ...], signature: bytes, message: bytes) -> bool:
    for key in keys:
        try:
            key.verify(signature, message)
            return True
        except InvalidSignature:
            continue
    return False


def seconds_setting(environ: Mapping[str, str], variable: str, default: int, minimum: int) -> int:
    """A whole number of seconds from the environment, or ConfigError naming it."""
    text = environ.get(variable, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < minimum:
        raise ConfigError(f"{variable}: expected whole seconds, at least {minimum}")
    return int(text)

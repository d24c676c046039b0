"""Verification schemes, one module each; a provider combines the ones configured.

| scheme | module | used by |
|---|---|---|
| Standard Webhooks | standard_webhooks | openai, replicate |
| Ed25519, keys from a JWKS (cached in process and Redis) | ed25519_jwks | fal |
| URL token (a secret path segment; no signature) | tokens | runpod |
| HMAC, configurable (header, SHA-256/512, hex/base64, timestamp) | hmac_signature | declarative |
"""

from webhook_ingest.verification.base import (
    AllOf,
    VerificationError,
    VerificationUnavailable,
    Verified,
    Verifier,
    body_digest,
)
from webhook_ingest.verification.ed25519_jwks import Ed25519JwksVerifier, JwksCache
from webhook_ingest.verification.hmac_signature import HmacOptions, HmacVerifier
from webhook_ingest.verification.standard_webhooks import (
    SECRET_PREFIX,
    StandardWebhooksVerifier,
    decode_secret,
)

__all__ = [
    "AllOf",
    "Ed25519JwksVerifier",
    "HmacOptions",
    "HmacVerifier",
    "JwksCache",
    "SECRET_PREFIX",
    "StandardWebhooksVerifier",
    "VerificationError",
    "VerificationUnavailable",
    "Verified",
    "Verifier",
    "body_digest",
    "decode_secret",
]

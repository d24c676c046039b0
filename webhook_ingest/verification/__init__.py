"""Verification schemes, one module each; a provider combines the ones configured.

| scheme | module | used by |
|---|---|---|
| Standard Webhooks | standard_webhooks | openai, replicate |
"""

from webhook_ingest.verification.base import (
    AllOf,
    VerificationError,
    VerificationUnavailable,
    Verified,
    Verifier,
    body_digest,
)
from webhook_ingest.verification.standard_webhooks import (
    SECRET_PREFIX,
    StandardWebhooksVerifier,
    decode_secret,
)

__all__ = [
    "AllOf",
    "SECRET_PREFIX",
    "StandardWebhooksVerifier",
    "VerificationError",
    "VerificationUnavailable",
    "Verified",
    "Verifier",
    "body_digest",
    "decode_secret",
]

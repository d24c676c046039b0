"""One case per provider for the receiver's contract (tests/integration/test_provider_contract.py).

In the manner of django-anymail's `tests/webhook_cases.py`: what every provider's
webhook must do is written once, in the contract; a case only says how its
provider proves a delivery (its signer, or its URL token), what a delivery looks
like, how two credentials are configured mid-rotation, and which id the receiver
must take for the delivery. Every signature is made as the provider documents it
(tests/support.py), never with the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import (
    fal_headers,
    github_headers,
    jwks,
    new_ed25519_key,
    signed_headers,
)
from webhook_ingest.verification import body_digest

EXAMPLE_PROVIDERS = Path(__file__).resolve().parents[1] / "examples" / "providers.yaml"
JWKS_PATH = "/.well-known/jwks.json"


@dataclass
class Sent:
    """One request as the provider sends it."""

    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def changed_byte(body: bytes) -> bytes:
    """The body with one byte changed, its length kept."""
    index = len(body) // 2
    return body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]


def one_character_off(text: str) -> str:
    return text[:-1] + ("A" if text[-1] != "A" else "B")


class ProviderCase:
    """A provider as the contract sees it. `credentials` are three of whatever
    proves a delivery (a secret, a key, a token): the current one, the previous one
    (both configured, as in a rotation), and one that is configured nowhere."""

    name: str
    credentials: tuple[Any, Any, Any]

    def settings(self, api) -> dict[str, str | None]:
        """The environment that configures the first two credentials (current first);
        may serve what the provider publishes (keys) on the fake API `api`."""
        raise NotImplementedError

    def path(self, job_id: str) -> str:
        return f"/webhook/{self.name}/{job_id}"

    def job_id_in(self, job_id: str) -> str | None:
        """The job id the receiver takes from `path(job_id)` (None for a project URL)."""
        return job_id

    def body(self, delivery_id: str) -> bytes:
        raise NotImplementedError

    def sign(self, credential: Any, job_id: str, body: bytes, delivery_id: str, at: float) -> Sent:
        """The request carrying `body`, proven with `credential`, sent at `at`."""
        raise NotImplementedError

    def delivery_id(self, sent: Sent) -> str:
        """The id the receiver must de-duplicate `sent` on."""
        raise NotImplementedError

    def tampered(self, sent: Sent) -> Sent:
        """`sent` with one thing changed that its proof covers: a byte of the body."""
        return Sent(sent.path, changed_byte(sent.body), dict(sent.headers))

    def secret_texts(self, sent: Sent) -> list[str]:
        """What must show in no answer and no log line: the configured secrets and
        the proof carried by `sent`."""
        raise NotImplementedError

    def signs_the_time(self) -> bool:
        """Whether a retry carries a new signature (a new timestamp is signed)."""
        return True

    def __repr__(self) -> str:
        return self.name


def new_whsec() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


class StandardWebhooksCase(ProviderCase):
    """OpenAI and Replicate: `webhook-id`, `webhook-timestamp`, `webhook-signature`
    (HMAC-SHA256 with a whsec_ secret), signed by the `standardwebhooks` package."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.credentials = (new_whsec(), new_whsec(), new_whsec())

    def settings(self, api) -> dict[str, str | None]:
        current, previous, _ = self.credentials
        return {f"WEBHOOK_SECRET_{self.name.upper()}": f"{current} {previous}"}

    def sign(self, credential, job_id, body, delivery_id, at) -> Sent:
        headers = signed_headers(credential, body, msg_id=delivery_id, timestamp=at)
        return Sent(self.path(job_id), body, headers)

    def delivery_id(self, sent: Sent) -> str:
        return sent.headers["webhook-id"]

    def secret_texts(self, sent: Sent) -> list[str]:
        signatures = [s.partition(",")[2] for s in sent.headers["webhook-signature"].split()]
        return [*self.credentials, *(c.removeprefix("whsec_") for c in self.credentials)] + [
            s for s in signatures if s
        ]


class OpenAICase(StandardWebhooksCase):
    """OpenAI's webhook is configured per project: one URL, the job found from the
    response id in the event."""

    def __init__(self) -> None:
        super().__init__("openai")

    def path(self, job_id: str) -> str:
        return "/webhook/openai"

    def job_id_in(self, job_id: str) -> str | None:
        return None

    def body(self, delivery_id: str) -> bytes:
        event = {
            "object": "event",
            "id": f"evt_{delivery_id}",
            "type": "response.completed",
            "created_at": int(time.time()),
            "data": {"id": f"resp_{delivery_id}"},
        }
        return json.dumps(event).encode()


class ReplicateCase(StandardWebhooksCase):
    """Replicate calls the per-job URL it was given at submission with the prediction."""

    def __init__(self) -> None:
        super().__init__("replicate")

    def body(self, delivery_id: str) -> bytes:
        prediction = {"id": f"pred-{delivery_id}", "status": "succeeded", "logs": ""}
        return json.dumps({**prediction, "output": ["https://example.invalid/out.png"]}).encode()


class FalCase(ProviderCase):
    """fal: an Ed25519 signature over request id, user id, timestamp and the body's
    SHA-256, checked with the keys fal publishes as a JWKS (served here by the fake
    API). A rotation is two keys in the set."""

    name = "fal"

    def __init__(self) -> None:
        self.credentials = (new_ed25519_key(), new_ed25519_key(), new_ed25519_key())

    def settings(self, api) -> dict[str, str | None]:
        current, previous, _ = self.credentials
        api.respond("GET", JWKS_PATH, (200, jwks(current, previous)))
        return {"WEBHOOK_JWKS_URL_FAL": f"{api.url}{JWKS_PATH}"}

    def body(self, delivery_id: str) -> bytes:
        completion = {
            "request_id": delivery_id,
            "gateway_request_id": delivery_id,
            "status": "OK",
            "payload": {"images": [{"url": "https://v3.fal.media/out.png"}], "seed": 42},
        }
        return json.dumps(completion).encode()

    def sign(self, credential, job_id, body, delivery_id, at) -> Sent:
        return Sent(
            self.path(job_id), body, fal_headers(credential, body, delivery_id, timestamp=at)
        )

    def delivery_id(self, sent: Sent) -> str:
        return sent.headers["X-Fal-Webhook-Request-Id"]

    def secret_texts(self, sent: Sent) -> list[str]:
        return [sent.headers["X-Fal-Webhook-Signature"]]  # the keys themselves are never sent


class RunPodCase(ProviderCase):
    """RunPod signs nothing: a secret token in the webhook URL is the proof, the
    job's own (base64url of HMAC-SHA256(secret, job id), issue 14 finding 7), so
    a "tampered" delivery is one with another token, a rotation is two secrets
    configured, and the delivery's id is a digest of its body (RunPod resends the
    same body). The shared token of the migration is tested in test_runpod.py."""

    name = "runpod"

    def __init__(self) -> None:
        self.credentials = tuple(secrets.token_urlsafe(32) for _ in range(3))

    def settings(self, api) -> dict[str, str | None]:
        current, previous, _ = self.credentials
        return {"WEBHOOK_URL_SECRET_RUNPOD": f"{current} {previous}"}

    def body(self, delivery_id: str) -> bytes:
        status = {"id": f"rp-{delivery_id}", "status": "COMPLETED", "delayTime": 120}
        return json.dumps({**status, "output": {"image_url": "https://cdn.example/o.png"}}).encode()

    def sign(self, credential, job_id, body, delivery_id, at) -> Sent:
        headers = {"Content-Type": "application/json"}
        return Sent(f"{self.path(job_id)}/{runpod_token(credential, job_id)}", body, headers)

    def delivery_id(self, sent: Sent) -> str:
        return body_digest(sent.body)

    def tampered(self, sent: Sent) -> Sent:
        path, _, token = sent.path.rpartition("/")
        return Sent(f"{path}/{one_character_off(token)}", sent.body, dict(sent.headers))

    def secret_texts(self, sent: Sent) -> list[str]:
        return [*self.credentials, sent.path.rpartition("/")[2]]

    def signs_the_time(self) -> bool:
        return False


def runpod_token(secret: str, job_id: str) -> str:
    """A job's URL token as the README documents it."""
    mac = hmac.new(secret.encode(), job_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


class GitHubCase(ProviderCase):
    """A declarative provider: the GitHub-style HMAC provider of
    examples/providers.yaml (`X-Hub-Signature-256: sha256=<hex>`; the delivery id
    in `X-GitHub-Delivery` is not signed, so the body's digest identifies a
    delivery), on the project URL a repository's hook is set to."""

    name = "github"

    def __init__(self) -> None:
        self.credentials = tuple("gh-" + secrets.token_hex(20) for _ in range(3))

    def settings(self, api) -> dict[str, str | None]:
        current, previous, _ = self.credentials
        return {
            "WEBHOOK_PROVIDERS_FILE": str(EXAMPLE_PROVIDERS),
            "WEBHOOK_SECRET_GITHUB": f"{current} {previous}",
            "GITHUB_TOKEN": "github_pat_" + secrets.token_hex(16),
            "GITHUB_BASE_URL": api.url,
        }

    def path(self, job_id: str) -> str:
        return "/webhook/github"

    def job_id_in(self, job_id: str) -> str | None:
        return None

    def body(self, delivery_id: str) -> bytes:
        run_id = uuid.UUID(delivery_id).int % 10**9
        run = {
            "id": run_id,
            "name": "Build",
            "status": "completed",
            "conclusion": "success",
            "html_url": f"https://github.com/acme/widgets/actions/runs/{run_id}",
        }
        return json.dumps({"action": "completed", "workflow_run": run}).encode()

    def sign(self, credential, job_id, body, delivery_id, at) -> Sent:
        return Sent(self.path(job_id), body, github_headers(credential, body, delivery_id))

    def delivery_id(self, sent: Sent) -> str:
        # X-GitHub-Delivery is not signed: the signed body identifies the delivery
        return body_digest(sent.body)

    def secret_texts(self, sent: Sent) -> list[str]:
        return [*self.credentials, sent.headers["X-Hub-Signature-256"].removeprefix("sha256=")]

    def signs_the_time(self) -> bool:
        return False  # GitHub signs the body only: a redelivery carries the same signature


CASES = [OpenAICase(), ReplicateCase(), FalCase(), RunPodCase(), GitHubCase()]

"""Test helpers: signing as the providers do, waiting, private Redis servers, fake APIs,
and the receiver built for one test.

Signatures are made as each provider documents them, never with the code under
test, so a receiver bug cannot hide behind a matching signer bug: Standard
Webhooks with the `standardwebhooks` package, fal's Ed25519 with `cryptography`,
GitHub-style HMAC with Python's `hmac`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis
from celery import Celery
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from standardwebhooks import Webhook

from webhook_ingest.state.keys import job_state


def signed_headers(
    secret: str,
    body: bytes | str,
    msg_id: str | None = None,
    timestamp: float | None = None,
) -> dict[str, str]:
    """Headers a Standard Webhooks sender (OpenAI, Replicate) would send for `body`."""
    text = body.decode() if isinstance(body, bytes) else body
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    moment = datetime.fromtimestamp(time.time() if timestamp is None else timestamp, tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, moment, text),
        "content-type": "application/json",
    }


def new_ed25519_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwk_of(private: Ed25519PrivateKey) -> dict:
    """The public half of `private` as a JWK, the way fal publishes its keys."""
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(raw),
        "kid": uuid.uuid4().hex,
        "use": "sig",
        "alg": "EdDSA",
    }


def jwks(*private_keys: Ed25519PrivateKey) -> dict:
    return {"keys": [jwk_of(key) for key in private_keys]}


def fal_headers(
    private: Ed25519PrivateKey,
    body: bytes,
    request_id: str,
    user_id: str = "user-1234",
    timestamp: float | None = None,
) -> dict[str, str]:
    """Headers fal sends: an Ed25519 signature (hex) over
    `request_id\\nuser_id\\ntimestamp\\nsha256hex(body)` (providers.md)."""
    moment = str(int(time.time() if timestamp is None else timestamp))
    message = "\n".join([request_id, user_id, moment, hashlib.sha256(body).hexdigest()])
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": moment,
        "X-Fal-Webhook-Signature": private.sign(message.encode()).hex(),
        "Content-Type": "application/json",
    }


def github_headers(secret: str, body: bytes, delivery: str | None = None) -> dict[str, str]:
    """GitHub's documented scheme: HMAC-SHA256 of the raw payload, hex, after `sha256=`."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": f"sha256={digest}",
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-GitHub-Event": "workflow_run",
        "Content-Type": "application/json",
    }


# The broadcast's fields, as the job system's contract names them (README, Redis
# keys): every JobStateUpdate message carries exactly these (a large result adds
# the marker fields of the broadcast's size rule).
BROADCAST_FIELDS = frozenset(
    {
        "job_id",
        "external_job_id",
        "status",
        "progress",
        "result",
        "error_message",
        "provider",
        "updated_at",
        "source",
    }
)


def seen_buckets(client: redis.Redis, provider: str, delivery_id: str, job_id: str | None = None):
    """The keys of `provider`'s seen-delivery buckets (README, Redis keys) that hold the
    delivery: its 12-byte blake2b digest of "{job id or ''}/{delivery id}", computed
    here from the documented format rather than by the code under test."""
    digest = hashlib.blake2b(f"{job_id or ''}/{delivery_id}".encode(), digest_size=12).digest()
    return sorted(
        key
        for key in client.scan_iter(match=f"webhook_ingest:seen:{provider}:*", count=1000)
        if client.sismember(key, digest)
    )


def body_of(payload: Any) -> str:
    return json.dumps(payload)


def wait_for(condition, timeout: float = 15.0, interval: float = 0.05, message: str = ""):
    """Poll until `condition()` is truthy; return its value or fail with `message`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or condition}")
        time.sleep(interval)


def logged_text(records) -> str:
    """Messages, arguments and every attribute (`extra`) of each log record: all a
    handler could write, to search for a secret that must not be there."""
    return "\n".join(f"{r.getMessage()} {r.args!r} {vars(r)!r}" for r in records)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of our own, for tests that stop or restart Redis."""

    def __init__(self, *extra_args: str) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="wi-redis-")
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed for this test (make test installs it)"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                self.dir,
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        wait_for(lambda: _pings(client), timeout=10, message="private redis to start")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.RedisError:
        return False


class FakeProviderAPI:
    """A real HTTP server playing a provider's API with the documented shapes.

    `respond(path, status, body)` queues answers for a path (the last one repeats);
    `requests` records what the code under test sent (with the caller's address,
    `client`); `hold(method, path, seconds)` makes the next answers to a path wait,
    so a test can act while a call is in flight.
    """

    def __init__(self) -> None:
        self._answers: dict[tuple[str, str], deque] = defaultdict(deque)
        self._holds: dict[tuple[str, str], deque] = defaultdict(deque)
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:  # e.g. Stability's multipart submit
                    parsed = None
                with fake._lock:
                    fake.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": dict(self.headers),
                            "json": parsed,
                            "body": raw,
                            "client": self.client_address,
                        }
                    )
                    holds = fake._holds.get((self.command, self.path))
                    delay = holds.popleft() if holds else 0.0
                    queue = fake._answers.get((self.command, self.path))
                    if not queue:
                        status, body, headers = 404, {"error": "not found"}, {}
                    elif len(queue) > 1:
                        status, body, headers = queue.popleft()
                    else:
                        status, body, headers = queue[0]
                if delay:
                    time.sleep(delay)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _handle
            do_POST = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeProviderAPI:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def respond(self, method: str, path: str, *answers: tuple) -> None:
        """Each answer is (status, body) or (status, body, headers)."""
        with self._lock:
            queue = self._answers[(method, path)]
            queue.clear()
            for answer in answers:
                status, body, *rest = answer
                queue.append((status, body, rest[0] if rest else {}))

    def hold(self, method: str, path: str, seconds: float, times: int = 1) -> None:
        """The next `times` answers to `method path` wait `seconds` before they are sent."""
        with self._lock:
            self._holds[(method, path)].extend([seconds] * times)

    def reset(self) -> None:
        with self._lock:
            self._answers.clear()
            self._holds.clear()
            self.requests.clear()

    def calls(self, method: str, path: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r["method"] == method and r["path"] == path)


class Subscriber:
    """Collects every message published on the given channels about jobs in this
    Redis database, in order.

    Pub/sub channels are shared by all databases of a server, so a test run on
    another database of the same server (a second checkout, a helper) publishes
    on the same channels; its jobs have no state in ours, and are left out.
    """

    def __init__(self, client: redis.Redis, *channels: str) -> None:
        self._client = client
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(*channels)
        wait_for(lambda: self._subscribed(len(channels)), timeout=5, message="subscription")
        self.messages: list[tuple[str, dict]] = []

    def _subscribed(self, count: int) -> bool:
        self.pubsub.get_message(timeout=0.05)
        return len(self.pubsub.channels) == count and self.pubsub.subscribed

    def drain(self, settle: float = 0.3) -> list[tuple[str, dict]]:
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.05)
            if message:
                channel = message["channel"]
                channel = channel.decode() if isinstance(channel, bytes) else channel
                data = json.loads(message["data"])
                if self._ours(data):
                    self.messages.append((channel, data))
                deadline = time.monotonic() + settle
        return self.messages

    def _ours(self, data: object) -> bool:
        job_id = data.get("job_id") if isinstance(data, dict) else None
        return not isinstance(job_id, str) or bool(self._client.exists(job_state(job_id)))

    def close(self) -> None:
        self.pubsub.close()


def celery_for(broker_url: str) -> Celery:
    """A publishing Celery app on `broker_url`, configured as the receiver's."""
    from webhook_ingest.config import load_settings
    from webhook_ingest.handoff import broker
    from webhook_ingest.handoff.single_script import broker_url as url_of

    celery_app = broker.celery_app(dataclasses.replace(load_settings(), broker_url=broker_url))
    assert url_of(celery_app) == broker_url
    return celery_app


def client_for(services, celery_app):
    """A Flask test client for the receiver built on `services` and `celery_app`."""
    from webhook_ingest.web.app import create_app

    app = create_app(services, celery_app)
    app.testing = True
    return app.test_client()


# -- the service built for one test (fixtures: tests/conftest.py) -----------------


def environ_with(**overrides: object) -> dict[str, str]:
    """The test environment (tests/conftest.py) with `overrides`: a value is set as
    text, None unsets the variable."""
    environ = {**os.environ, **overrides}
    return {name: str(value) for name, value in environ.items() if value is not None}


QUEUE = "webhook_ingest"  # celeryconfig.task_default_queue
# celeryconfig.UNMATCHED_QUEUE: where the receiver queues a delivery whose job has no mapping
UNMATCHED_QUEUE = "webhook_ingest.unmatched"


def queued_in(broker: redis.Redis) -> int:
    """Deliveries waiting on the broker's two queues: the receiver puts those for a
    job with no mapping on the unmatched one (issue 14, finding 4)."""
    return broker.llen(QUEUE) + broker.llen(UNMATCHED_QUEUE)


@dataclass
class Receiver:
    """The receiver app as the web process builds it (services, a publishing Celery
    app), with two clients of its state Redis for the test to look with."""

    client: Any  # Flask test client
    services: Any  # webhook_ingest.services.Services
    celery: Celery
    redis: redis.Redis  # the state Redis, text replies
    raw: redis.Redis  # the same, bytes replies (for DUMP)

    @classmethod
    def build(cls, redis_url: str, broker_url: str, **environ: object) -> Receiver:
        from webhook_ingest.services import build_services

        services = build_services(
            environ=environ_with(REDIS_URL=redis_url, CELERY_BROKER_URL=broker_url, **environ)
        )
        assert services.settings.redis_url == redis_url
        assert services.settings.broker_url == broker_url
        celery_app = celery_for(broker_url)
        return cls(
            client=client_for(services, celery_app),
            services=services,
            celery=celery_app,
            redis=redis.Redis.from_url(redis_url, decode_responses=True),
            raw=redis.Redis.from_url(redis_url),
        )

    def snapshot(self, *skip: bytes) -> dict[bytes, bytes]:
        """Every key with its serialized value: any write shows as a difference.
        RATE_LIMIT counters are left out: a verified delivery's counter expires with
        its window (a second by default), whatever the test did meanwhile; so is any
        key starting with one of `skip`. A set is compared by its members: its DUMP
        follows the hash table's order, which a mere lookup may change (Redis rehashes
        incrementally on reads too), as the claim script's SISMEMBER does to the
        seen-delivery buckets."""
        skipped = (b"webhook_ingest:rate:", *skip)
        return {
            k: sorted(self.raw.smembers(k)) if self.raw.type(k) == b"set" else self.raw.dump(k)
            for k in self.raw.keys("*")
            if not k.startswith(skipped)
        }

    def queued(self) -> int:
        """Deliveries waiting on the broker's queues (the main one and the unmatched
        one), where the state Redis is the broker."""
        return queued_in(self.raw)

    def take_queued(self):
        """The oldest queued delivery (a handoff Delivery), as a worker would receive it."""
        from webhook_ingest.handoff.delivery import Delivery

        raw = self.redis.rpop(QUEUE) or self.redis.rpop(UNMATCHED_QUEUE)
        assert raw is not None, "nothing was queued"
        args, _kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
        return Delivery.from_message(args[0])

    def register(self, job_id: str, provider: str, external_id: str) -> None:
        """The job mapping, through `POST /jobs` as the job system registers it."""
        answer = self.client.post(
            "/jobs",
            json={"job_id": job_id, "provider": provider, "external_job_id": external_id},
            headers={"Authorization": f"Bearer {os.environ['ADMIN_TOKEN']}"},
        )
        assert answer.status_code == 201, answer.get_json()

    def state(self, job_id: str) -> dict[str, str]:
        return self.redis.hgetall(job_state(job_id))

    def close(self) -> None:
        self.celery.close()
        self.services.redis.close()
        self.redis.close()
        self.raw.close()

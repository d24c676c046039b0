"""Abuse at the edge (issue 4): malformed floods, oversized requests, secrets in logs.

1. A seeded flood of a few hundred malformed requests against the Flask app on a
   redis-server of its own: never a 5xx, every answer a small JSON object (an error,
   or the 2xx / duplicate shape for the few that are authentic after all), and no
   rejected request writes anything to Redis or the broker.
2. The real gunicorn with the repository's gunicorn.conf.py (`e2e`): request lines
   and header fields over its limits are refused by gunicorn itself, and a chunked
   body over MAX_BODY_BYTES gets 413 — sent over raw sockets, as an attacker would.
3. Secrets, tokens and signatures never reach a log: neither the app's records at
   DEBUG nor gunicorn's stderr, for valid and invalid deliveries alike.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from standardwebhooks.webhooks import Webhook, hmac_data

from tests.conftest import OPENAI_SECRET, REPLICATE_OLD_SECRET, REPLICATE_SECRET
from tests.support import free_port, logged_text, queued_in, seen_buckets, signed_headers, wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
UNMATCHED_QUEUE = "webhook_ingest.unmatched"  # celeryconfig.UNMATCHED_QUEUE
QUEUE = "webhook_ingest"  # celeryconfig.task_default_queue
MAX_BODY_BYTES = int(os.environ["MAX_BODY_BYTES"])  # 65536, set by tests/conftest.py
SEED = int(os.environ.get("ABUSE_SEED", "20240604"))
FLOOD_SIZE = 320

# Replicate: Standard Webhooks + a bearer token (mid-rotation); OpenAI: Standard
# Webhooks + basic auth; RunPod: a URL token only.
BEARER = "bt_" + secrets.token_urlsafe(24)
BEARER_OLD = "bt_" + secrets.token_urlsafe(24)
BASIC_USER = "hooks"
BASIC_PASSWORD = "pw_" + secrets.token_urlsafe(18)
URL_TOKEN = "ut" + secrets.token_urlsafe(24)
EDGE_ENV = {
    "WEBHOOK_BEARER_TOKEN_REPLICATE": f"{BEARER} {BEARER_OLD}",
    "WEBHOOK_BASIC_AUTH_OPENAI": f"{BASIC_USER}:{BASIC_PASSWORD}",
    "WEBHOOK_URL_TOKEN_RUNPOD": URL_TOKEN,
}
BASIC_HEADER = "Basic " + base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()


def secret_strings() -> list[str]:
    """Everything that must never be shown or logged (signatures are added per request)."""
    values = [BEARER, BEARER_OLD, BASIC_PASSWORD, URL_TOKEN, BASIC_HEADER.split()[1]]
    for secret in (OPENAI_SECRET, REPLICATE_SECRET, REPLICATE_OLD_SECRET):
        values += [secret, secret.removeprefix("whsec_")]
    return values


# -- signing as the providers do ------------------------------------------------------


def sw_headers(secret: str, body: bytes, msg_id: str | None = None, ts: str | None = None):
    """Standard Webhooks headers for raw bytes, with the `standardwebhooks` package's HMAC."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    ts = ts or str(int(time.time()))
    digest = hmac_data(Webhook(secret)._whsecret, f"{msg_id}.{ts}.".encode() + body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": ts,
        "webhook-signature": f"v1,{base64.b64encode(digest).decode()}",
    }


def authentic(provider: str, body: bytes, job: str = "job-abc", **sign) -> tuple[str, dict]:
    """Path and headers with which `provider`'s delivery of `body` passes every check."""
    if provider == "replicate":
        headers = sw_headers(REPLICATE_SECRET, body, **sign)
        return f"/webhook/replicate/{job}", {**headers, "Authorization": f"Bearer {BEARER}"}
    if provider == "openai":
        return "/webhook/openai", {
            **sw_headers(OPENAI_SECRET, body, **sign),
            "Authorization": BASIC_HEADER,
        }
    assert provider == "runpod"
    return f"/webhook/runpod/{job}/{URL_TOKEN}", {}


def valid_body(provider: str) -> bytes:
    if provider == "openai":
        document = {
            "id": f"evt_{uuid.uuid4().hex}",
            "type": "response.completed",
            "data": {"id": "resp_1"},
        }
    elif provider == "runpod":
        document = {"id": f"rp-{uuid.uuid4().hex[:8]}", "status": "COMPLETED", "output": {}}
    else:
        document = {"id": f"pred-{uuid.uuid4().hex[:8]}", "status": "starting"}
    return json.dumps(document).encode()


# -- the app on a Redis of its own ------------------------------------------------------


@pytest.fixture
def target(receiver_with):
    """The receiver with the edge settings on the module's private Redis, emptied."""
    return receiver_with(**EDGE_ENV)


# -- the flood ---------------------------------------------------------------------------


@dataclass
class Attempt:
    kind: str
    method: str = "POST"
    path: str = "/webhook/replicate/job-abc"
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunked: bool = False


PROVIDERS = ("replicate", "openai", "runpod")
SW_NAMES = ("webhook-id", "webhook-timestamp", "webhook-signature")


def _latin1_garbage(rng: random.Random, size: int) -> str:
    """Header text as a WSGI server hands over bytes that are not UTF-8 (latin-1 decoded);
    no CR/LF, which no server would pass on."""
    alphabet = [chr(c) for c in range(0x20, 0x100) if c != 0x7F] + ["\t", "\x00", "\x1b"]
    return "".join(rng.choice(alphabet) for _ in range(size))


def _random_path(rng: random.Random) -> str:
    provider = rng.choice(PROVIDERS)
    return {
        "replicate": "/webhook/replicate/job-abc",
        "openai": "/webhook/openai",
        "runpod": f"/webhook/runpod/job-abc/{URL_TOKEN}",
    }[provider]


def _flood_random_bytes(rng):
    headers = []
    if rng.random() < 0.5:
        headers = [(name, _latin1_garbage(rng, rng.randint(0, 40))) for name in SW_NAMES]
    return Attempt(
        "random-bytes",
        path=_random_path(rng),
        body=rng.randbytes(rng.randint(0, 3000)),
        headers=headers,
    )


def _flood_authentic_garbage_body(rng):
    """Authentic, so only the body is wrong: random bytes, invalid UTF-8, JSON non-objects."""
    provider = rng.choice(PROVIDERS)
    body = rng.choice(
        [
            rng.randbytes(rng.randint(0, 500)),
            b'{"id": "pred-x", "status": "\xff\xfe\xfd"}',
            b"\xef\xbb\xbf" + valid_body(provider),  # a UTF-8 BOM is not JSON
            b"[1, 2, 3]",
            b'"just a string"',
            b"null",
            b"1e400",
            b'{"a": NaN}',
            b'{"a": Infinity}',
            b'{"a": 1' + b"1" * 5000 + b"}",  # an integer over Python's 4300-digit limit
            b'{"a": "\\ud800"}',
            b"{" * 50,
            valid_body(provider)[:-3],
        ]
    )
    path, headers = authentic(provider, body)
    return Attempt("authentic-garbage-body", path=path, body=body, headers=list(headers.items()))


def _flood_duplicated_headers(rng):
    provider = rng.choice(("replicate", "openai"))
    body = valid_body(provider)
    path, headers = authentic(provider, body)
    pairs = list(headers.items())
    name = rng.choice((*SW_NAMES, "Authorization"))
    fake = (name, rng.choice(["", "v1,AAAA", _latin1_garbage(rng, 20), f"msg_{uuid.uuid4().hex}"]))
    position = rng.choice([0, len(pairs)])
    pairs.insert(position, fake)
    return Attempt("duplicated-header", path=path, body=body, headers=pairs)


def _flood_non_utf8_header_values(rng):
    provider = rng.choice(("replicate", "openai"))
    body = valid_body(provider)
    path, headers = authentic(provider, body)
    name = rng.choice((*SW_NAMES, "Authorization", "Content-Type"))
    headers[name] = _latin1_garbage(rng, rng.randint(1, 60))
    return Attempt("non-utf8-header", path=path, body=body, headers=list(headers.items()))


def _flood_huge_webhook_id(rng):
    provider = rng.choice(("replicate", "openai"))
    body = valid_body(provider)
    path, headers = authentic(provider, body, msg_id="m" * 10_240)
    return Attempt("webhook-id-10kB", path=path, body=body, headers=list(headers.items()))


def _flood_huge_job_id(rng):
    provider = rng.choice(("replicate", "runpod"))
    body = valid_body(provider)
    path, headers = authentic(provider, body, job="j" * 10_240)
    return Attempt("job-id-10kB", path=path, body=body, headers=list(headers.items()))


BAD_TIMESTAMPS = [
    "NaN", "nan", "inf", "-1", "-1700000000", "0", "1.5e9", "1700000000.5", "9" * 40,
    "", " ", "0x6553f100", "١٧٠٠٠٠٠٠٠٠", "+1700000000", " 1700000000", "1700000000 ",
    "99999999999999999999999999999999999999999999999999", "-0", "1e3",
]  # fmt: skip


def _flood_bad_timestamp(rng):
    provider = rng.choice(("replicate", "openai"))
    body = valid_body(provider)
    ts = rng.choice(BAD_TIMESTAMPS)
    path, headers = authentic(provider, body)
    headers["webhook-timestamp"] = ts  # signature was made over the real one
    if rng.random() < 0.5 and ts.strip():
        path, headers = authentic(provider, body, ts=ts)  # signed over the bad one itself
    return Attempt("bad-timestamp", path=path, body=body, headers=list(headers.items()))


def _flood_bad_signature(rng):
    provider = rng.choice(("replicate", "openai"))
    body = valid_body(provider)
    path, headers = authentic(provider, body)
    headers["webhook-signature"] = rng.choice(
        [
            "",
            "   ",
            "garbage",
            "v1,",
            "v1," + base64.b64encode(rng.randbytes(32)).decode(),
            "v1," + base64.b64encode(rng.randbytes(rng.randint(0, 100))).decode(),
            " ".join(["v1,AAAA"] * rng.randint(2, 2000)),
            "v2," + headers["webhook-signature"][3:],
            "v1 " + headers["webhook-signature"][3:],
            _latin1_garbage(rng, 50),
            headers["webhook-signature"][:-2] + "==",
        ]
    )
    return Attempt("bad-signature", path=path, body=body, headers=list(headers.items()))


def _flood_content_type(rng):
    """Authentic deliveries with odd content types: the type does not decide, the bytes do."""
    provider = rng.choice(PROVIDERS)
    body = valid_body(provider)
    path, headers = authentic(provider, body)
    content_type = rng.choice(
        [
            "text/plain",
            "application/xml",
            "multipart/form-data; boundary=xyz",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin-1",
            "\xff/\xfe",
            "",
        ]
    )
    headers["Content-Type"] = content_type
    return Attempt("content-type", path=path, body=body, headers=list(headers.items()))


def _flood_unknown_provider(rng):
    name = rng.choice(
        [
            "".join(
                rng.choice("abcdefghijklmnopqrstuvwxyz0123456789_-")
                for _ in range(rng.randint(1, 30))
            ),
            "REPLICATE",
            "Replicate",
            "replicate%20",
            "r%C3%A9plicate",
            "%00",
            "stability",  # known, but it has no webhooks
            "fal",  # known, not configured here
        ]
    )
    body = valid_body("replicate")
    _, headers = authentic("replicate", body)
    path = rng.choice(
        [f"/webhook/{name}", f"/webhook/{name}/job-abc", f"/webhook/{name}/job-abc/{URL_TOKEN}"]
    )
    return Attempt("unknown-provider", path=path, body=body, headers=list(headers.items()))


TRAVERSALS = [
    "/webhook/../webhook/replicate/job-abc",
    "/webhook/replicate/../openai",
    "/webhook/replicate/job-abc/../../openai",
    "/webhook/replicate/..%2f..%2fetc%2fpasswd",
    "/webhook/replicate/%2e%2e/%2e%2e/etc/passwd",
    "/webhook/replicate/job%00abc",
    "/webhook//replicate/job-abc",
    "/webhook/replicate//job-abc",
    "/webhook/replicate/job-abc/",
    "/webhook/./replicate/job-abc",
    "/WEBHOOK/replicate/job-abc",
    "/webhook/replicate/job-abc;x=1",
    "/webhook/replicate/%252e%252e",
    "/webhook/runpod/job-abc/..",
    "/webhook/runpod/job-abc/%2e%2e%2f" + URL_TOKEN,
    "/../../../etc/passwd",
    "/webhook/replicate/job-abc/extra/segments/here",
]


def _flood_traversal(rng):
    body = valid_body("replicate")
    _, headers = authentic("replicate", body)
    return Attempt(
        "path-traversal", path=rng.choice(TRAVERSALS), body=body, headers=list(headers.items())
    )


def _flood_method(rng):
    provider = rng.choice(PROVIDERS)
    body = valid_body(provider)
    path, headers = authentic(provider, body)
    method = rng.choice(
        ["GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "FOO"]
    )
    return Attempt("method", method=method, path=path, body=body, headers=list(headers.items()))


def _flood_too_large(rng):
    provider = rng.choice(PROVIDERS)
    padding = "x" * (MAX_BODY_BYTES + rng.randint(1, 5000))
    body = json.dumps({"id": "pred-x", "status": "starting", "pad": padding}).encode()
    path, headers = authentic(provider, body)
    return Attempt(
        "too-large", path=path, body=body, headers=list(headers.items()), chunked=rng.random() < 0.5
    )


def _flood_tampered(rng):
    """Authentic, then one byte of the body or one header changed."""
    provider = rng.choice(PROVIDERS)
    body = bytearray(valid_body(provider))
    path, headers = authentic(provider, bytes(body))
    choice = rng.random()
    if choice < 0.4:
        index = rng.randrange(len(body))
        body[index] = (body[index] + rng.randint(1, 255)) % 256
    elif provider == "runpod":
        path = path[:-1] + ("A" if path[-1] != "A" else "B")
    elif choice < 0.7:
        headers["Authorization"] = headers["Authorization"][:-1] + "A"
    else:
        name = rng.choice(SW_NAMES)
        headers[name] = headers[name] + "0"
    return Attempt("tampered", path=path, body=bytes(body), headers=list(headers.items()))


def _flood_authentic(rng):
    """A few real deliveries, some sent twice: the 2xx shapes are part of the flood."""
    provider = rng.choice(PROVIDERS)
    body = valid_body(provider)
    path, headers = authentic(provider, body)
    return Attempt("authentic", path=path, body=body, headers=list(headers.items()))


FLOOD = [
    _flood_random_bytes,
    _flood_authentic_garbage_body,
    _flood_duplicated_headers,
    _flood_non_utf8_header_values,
    _flood_huge_webhook_id,
    _flood_huge_job_id,
    _flood_bad_timestamp,
    _flood_bad_signature,
    _flood_content_type,
    _flood_unknown_provider,
    _flood_traversal,
    _flood_method,
    _flood_too_large,
    _flood_tampered,
    _flood_authentic,
]


def send(client, attempt: Attempt):
    kwargs = {"method": attempt.method, "headers": attempt.headers}
    if attempt.chunked:
        kwargs["input_stream"] = io.BytesIO(attempt.body)
        kwargs["headers"] = [*attempt.headers, ("Transfer-Encoding", "chunked")]
        kwargs["environ_overrides"] = {"wsgi.input_terminated": True}
    else:
        kwargs["data"] = attempt.body
    return client.open(attempt.path, **kwargs)


def assert_nothing_leaked(text: str, attempt: Attempt) -> None:
    assert "Traceback" not in text
    for value in secret_strings():
        assert value not in text, f"{attempt.kind}: a secret is in the answer"
    for name, value in attempt.headers:
        if name.lower() == "webhook-signature":
            for signature in value.split():
                encoded = signature.partition(",")[2]
                assert len(encoded) < 8 or encoded not in text, attempt.kind
        if name.lower() == "authorization" and len(value) >= 8:
            assert value not in text, attempt.kind


def test_a_seeded_flood_of_malformed_requests_gets_json_4xx_and_writes_nothing(target):
    rng = random.Random(SEED)
    attempts = [rng.choice(FLOOD)(rng) for _ in range(FLOOD_SIZE)]
    # send some authentic deliveries twice, to see the duplicate shape in the flood
    attempts += [a for a in attempts if a.kind == "authentic"][:5]
    seen: Counter = Counter()
    kinds_by_status: dict[int, set[str]] = {}

    for attempt in attempts:
        before, queued = target.snapshot(), target.queued()
        response = send(target.client, attempt)
        status = response.status_code
        seen[status] += 1
        kinds_by_status.setdefault(status, set()).add(attempt.kind)
        context = (SEED, attempt.kind, attempt.method, attempt.path[:80], status)

        assert status < 500, (context, response.get_data(as_text=True)[:200])
        text = response.get_data(as_text=True)
        assert_nothing_leaked(text, attempt)
        if attempt.method == "HEAD":
            assert status == 405 and text == "", context
        elif attempt.method == "OPTIONS":
            # Flask's automatic OPTIONS: says what is allowed, does nothing
            assert status == 200 and text == "", context
            assert "POST" in response.headers.get("Allow", ""), context
        elif status == 308:
            # werkzeug merges repeated slashes (`/webhook//replicate/...`) with a redirect
            # to the same path on this host; the request itself did nothing
            assert response.headers["Location"].startswith(
                ("/webhook/", "http://localhost/webhook/")
            ), context
        elif 200 <= status < 300:
            assert response.get_json() in (
                {"received": True},
                {"received": True, "duplicate": True},
            ), context
        else:
            payload = response.get_json(silent=True)
            assert isinstance(payload, dict) and isinstance(payload.get("error"), str), context
            assert payload["error"], context
        if status == 202:
            assert target.queued() == queued + 1, context
        else:
            assert target.snapshot() == before, ("a rejected request wrote to Redis", context)
            assert target.queued() == queued, context

    print(f"\nflood seed {SEED}: {len(attempts)} requests, statuses {dict(sorted(seen.items()))}")
    # the flood reached every stage of the receiver, and some deliveries were authentic
    for status in (200, 202, 400, 401, 404, 405, 413):
        assert seen[status], (status, dict(seen))
    assert "authentic" in kinds_by_status[202]
    assert not any(s >= 500 for s in seen)


def test_authentic_deliveries_with_odd_content_types_are_received(target):
    """The content type decides nothing: a form type must not make the body unreadable."""
    for content_type in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        body = valid_body("replicate")
        path, headers = authentic("replicate", body)
        response = target.client.post(
            path, data=body, headers={**headers, "Content-Type": content_type}
        )
        assert response.status_code == 202, (content_type, response.get_data(as_text=True))


@pytest.mark.parametrize("depth", [1_000, 5_000], ids=["depth-1000", "depth-5000"])
@pytest.mark.parametrize("opener", ["[", '{"a":'], ids=["arrays", "objects"])
def test_an_authentic_but_deeply_nested_body_is_400_not_500(target, opener, depth):
    closer = "]" if opener == "[" else "}"
    body = (opener * depth + "1" + closer * depth).encode()
    assert len(body) < MAX_BODY_BYTES
    path, headers = authentic("replicate", body)
    before = target.snapshot()

    response = target.client.post(path, data=body, headers=headers)

    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"]
    assert target.snapshot() == before


# -- secrets in the app's log records ---------------------------------------------------------


def mixed_batch() -> list[Attempt]:
    """Valid and invalid deliveries for every scheme configured in EDGE_ENV."""
    batch = []
    for provider in PROVIDERS:
        body = valid_body(provider)
        path, headers = authentic(provider, body)
        batch.append(Attempt("valid", path=path, body=body, headers=list(headers.items())))
        batch.append(Attempt("again", path=path, body=body, headers=list(headers.items())))
    rng = random.Random(SEED + 1)
    for builder in (
        _flood_tampered,
        _flood_bad_signature,
        _flood_duplicated_headers,
        _flood_bad_timestamp,
    ):
        batch += [builder(rng) for _ in range(6)]
    body = valid_body("replicate")
    path, headers = authentic("replicate", body)
    nested = b"[" * 3000 + b"]" * 3000
    batch += [
        Attempt(
            "bearer-old",
            path=path,
            body=body,
            headers=list({**headers, "Authorization": f"Bearer {BEARER_OLD}"}.items()),
        ),
        Attempt("wrong-token", path=f"/webhook/runpod/job-abc/{URL_TOKEN}x", body=body),
        Attempt(
            "token-on-replicate",
            path=f"/webhook/replicate/job-abc/{URL_TOKEN}",
            body=body,
            headers=list(headers.items()),
        ),
        Attempt(
            "bearer-as-basic",
            path="/webhook/openai",
            body=body,
            headers=[("Authorization", f"Basic {BEARER}")],
        ),
        _flood_too_large(rng),
        Attempt(
            "nested",
            path=path,
            body=nested,
            headers=list(authentic("replicate", nested)[1].items()),
        ),
    ]
    return batch


def signature_values(batch: list[Attempt]) -> list[str]:
    values = []
    for attempt in batch:
        for name, value in attempt.headers:
            if name.lower() == "webhook-signature":
                values += [
                    s.partition(",")[2] for s in value.split() if len(s.partition(",")[2]) >= 16
                ]
            if name.lower() == "authorization" and len(value) >= 16:
                values += [value, value.split(" ", 1)[-1]]
    return values


def test_no_secret_token_or_signature_reaches_the_app_logs_at_debug(target, caplog):
    caplog.set_level(logging.DEBUG)
    batch = mixed_batch()

    statuses = Counter(send(target.client, attempt).status_code for attempt in batch)

    assert statuses[202] >= 3 and statuses[401] >= 10, statuses
    text = logged_text(caplog.records)
    assert "delivery rejected" in text, "the rejections were logged somewhere else"
    for value in secret_strings() + signature_values(batch):
        assert value not in text
    # the broker holds the raw bodies, never the credentials that came with them
    queued = b"\n".join(
        target.raw.lrange(QUEUE, 0, -1) + target.raw.lrange(UNMATCHED_QUEUE, 0, -1)
    ).decode()
    for value in secret_strings() + signature_values(batch):
        assert value not in queued


# -- the real gunicorn ----------------------------------------------------------------------------


class Gunicorn:
    """`gunicorn -c gunicorn.conf.py webhook_ingest.wsgi:app`, stderr to a file."""

    def __init__(self, redis_url: str, *, access_log: bool = False) -> None:
        self.port = free_port()
        self.log = Path(f"/tmp/wi-abuse-{uuid.uuid4().hex[:8]}.log")
        env = {
            **os.environ,
            **EDGE_ENV,
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "PORT": str(self.port),
            "WEB_CONCURRENCY": "2",
        }
        env.pop("GUNICORN_ACCESS_LOG", None)  # the deployed default: no access log
        if access_log:
            env["GUNICORN_ACCESS_LOG"] = "1"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "webhook_ingest.wsgi:app"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._ready, timeout=30, message=f"gunicorn to be ready ({self.log})")

    def _ready(self) -> bool:
        try:
            return exchange(self.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)

    def logged(self) -> str:
        return self.log.read_text(errors="replace")


def exchange(port: int, request: bytes) -> tuple[int, bytes]:
    """Send raw bytes, read the answer until the server closes: (status, whole answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before we finished: the answer may still be there
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            answer += chunk
            if b"\r\n\r\n" in answer and _complete(answer):
                break
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def http_request(
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    *,
    chunked: bool = False,
    extra_lines: list[bytes] = (),
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in headers.items()]
    lines += list(extra_lines)
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
        payload = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 4096]), body[i : i + 4096])
            for i in range(0, len(body), 4096)
        )
        payload += b"0\r\n\r\n"
    else:
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


@pytest.fixture(scope="module")
def gunicorn(private_redis):
    store = redis.Redis.from_url(private_redis.url)
    store.flushall()
    server = Gunicorn(private_redis.url)
    yield server, store
    server.stop()
    store.close()
    server.log.unlink(missing_ok=True)


def authentic_request(provider: str = "replicate", path_suffix: str = "", **kwargs) -> bytes:
    body = valid_body(provider)
    path, headers = authentic(provider, body)
    headers["Content-Type"] = "application/json"
    return http_request("POST", path + path_suffix, headers, body, **kwargs)


# -- Standard Webhooks headers as servers pass them on (issue 14, finding 8) ----------------

OTHER_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signed_request(body: str, msg_id: bytes, timestamp: str, *signatures: str) -> bytes:
    """A Replicate delivery with `msg_id` sent as raw bytes and one
    `webhook-signature` header line per signature."""
    headers = {
        "webhook-timestamp": timestamp,
        "Authorization": f"Bearer {BEARER}",
        "Content-Type": "application/json",
    }
    lines = [b"webhook-id: " + msg_id]
    lines += [b"webhook-signature: " + signature.encode() for signature in signatures]
    return http_request(
        "POST", "/webhook/replicate/job-abc", headers, body.encode(), extra_lines=lines
    )


@pytest.mark.e2e
@pytest.mark.parametrize(
    "secrets_in_order",
    [(REPLICATE_SECRET, OTHER_SECRET), (OTHER_SECRET, REPLICATE_SECRET)],
    ids=["matching-first", "matching-second"],
)
def test_two_signature_header_lines_are_each_tried_through_gunicorn(gunicorn, secrets_in_order):
    """A sender (or a proxy) may send two `webhook-signature` lines during a rotation;
    gunicorn joins them with a comma, as RFC 9110 allows. Each `v1,<sig>` counts."""
    server, store = gunicorn
    queued = queued_in(store)
    body = valid_body("replicate").decode()
    msg_id, moment = f"msg_{uuid.uuid4().hex}", time.time()
    signed = [signed_headers(s, body, msg_id=msg_id, timestamp=moment) for s in secrets_in_order]
    signatures = [headers["webhook-signature"] for headers in signed]
    timestamp = signed[0]["webhook-timestamp"]

    status, answer = exchange(
        server.port, signed_request(body, msg_id.encode(), timestamp, *signatures)
    )

    assert status == 202, answer[-300:]
    assert queued_in(store) == queued + 1


@pytest.mark.e2e
def test_two_signature_header_lines_that_both_fail_are_still_401(gunicorn):
    server, store = gunicorn
    queued = queued_in(store)
    body = valid_body("replicate").decode()
    msg_id, moment = f"msg_{uuid.uuid4().hex}", time.time()
    wrong = signed_headers(OTHER_SECRET, body, msg_id=msg_id, timestamp=moment)

    status, _ = exchange(
        server.port,
        signed_request(
            body,
            msg_id.encode(),
            wrong["webhook-timestamp"],
            wrong["webhook-signature"],
            "v1,bm90IGEgc2lnbmF0dXJl",
        ),
    )

    assert status == 401
    assert queued_in(store) == queued


@pytest.mark.e2e
@pytest.mark.parametrize("prefix", ["msg_ünïcødé_", "msg_日本語_", "msg_🚀_"])
def test_a_non_ascii_webhook_id_verifies_through_gunicorn_and_is_the_delivery_id(gunicorn, prefix):
    """The id is signed as UTF-8 (the `standardwebhooks` signer encodes its text),
    sent as UTF-8 bytes, and reaches the app as WSGI's latin-1 text of those bytes."""
    server, store = gunicorn
    queued = queued_in(store)
    body = valid_body("replicate").decode()
    msg_id = prefix + uuid.uuid4().hex[:8]
    headers = signed_headers(REPLICATE_SECRET, body, msg_id=msg_id)
    request = signed_request(
        body, msg_id.encode(), headers["webhook-timestamp"], headers["webhook-signature"]
    )

    first, answer = exchange(server.port, request)
    again, _ = exchange(server.port, request)

    assert first == 202, answer[-300:]
    assert again == 200
    assert queued_in(store) == queued + 1
    # signed_request posts to /webhook/replicate/job-abc: the claim is that job's
    assert seen_buckets(store, "replicate", msg_id, "job-abc")


@pytest.mark.e2e
def test_gunicorn_refuses_a_request_line_over_its_limit(gunicorn):
    """The same authentic delivery is accepted with a short query string: only the
    length of the request line (limit_request_line = 4094) makes the difference."""
    server, store = gunicorn
    queued = queued_in(store)

    control, _ = exchange(server.port, authentic_request(path_suffix="?pad=" + "a" * 100))
    status, answer = exchange(server.port, authentic_request(path_suffix="?pad=" + "a" * 5000))

    assert control == 202
    assert 400 <= status < 500, answer[:300]
    assert queued_in(store) == queued + 1, "the refused request must not be enqueued"


@pytest.mark.e2e
def test_gunicorn_refuses_a_header_field_over_its_limit(gunicorn):
    server, store = gunicorn
    queued = queued_in(store)

    control, _ = exchange(server.port, authentic_request(extra_lines=[b"X-Pad: " + b"a" * 1000]))
    status, answer = exchange(
        server.port, authentic_request(extra_lines=[b"X-Pad: " + b"a" * 9000])
    )

    assert control == 202
    assert 400 <= status < 500, answer[:300]
    assert queued_in(store) == queued + 1


@pytest.mark.e2e
def test_gunicorn_refuses_more_header_fields_than_its_limit(gunicorn):
    server, store = gunicorn
    queued = queued_in(store)
    many = [b"X-Pad-%d: x" % i for i in range(60)]

    status, answer = exchange(server.port, authentic_request(extra_lines=many))

    assert 400 <= status < 500, answer[:300]
    assert queued_in(store) == queued


@pytest.mark.e2e
def test_a_chunked_body_over_max_body_bytes_gets_413_through_gunicorn(gunicorn):
    server, store = gunicorn
    queued = queued_in(store)
    body = json.dumps(
        {"id": "pred-x", "status": "starting", "pad": "x" * (MAX_BODY_BYTES + 10)}
    ).encode()
    path, headers = authentic("replicate", body)
    headers["Content-Type"] = "application/json"

    control, _ = exchange(server.port, authentic_request(chunked=True))
    status, answer = exchange(server.port, http_request("POST", path, headers, body, chunked=True))

    assert control == 202, "a chunked body within the limit is received"
    assert status == 413, answer[:300]
    payload = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert payload.get("error")
    assert queued_in(store) == queued + 1


@pytest.mark.e2e
def test_a_content_length_over_max_body_bytes_gets_413_through_gunicorn(gunicorn):
    server, store = gunicorn
    queued = queued_in(store)
    body = json.dumps(
        {"id": "pred-x", "status": "starting", "pad": "x" * (MAX_BODY_BYTES + 10)}
    ).encode()
    path, headers = authentic("replicate", body)

    status, answer = exchange(server.port, http_request("POST", path, headers, body))

    assert status == 413, answer[:300]
    assert queued_in(store) == queued


@pytest.mark.e2e
def test_no_secret_token_or_signature_reaches_the_gunicorn_log(gunicorn):
    """The deployed configuration (no access log, the app logging at INFO) over real HTTP,
    including requests gunicorn itself refuses with a token in the request line or a
    credential in an oversized header."""
    server, _ = gunicorn
    start = len(server.logged())  # this test's lines only: others share the server
    batch = mixed_batch()
    statuses = Counter()
    for attempt in batch:
        headers = dict(attempt.headers)  # a raw request sends each name once
        request = http_request(
            attempt.method, attempt.path, headers, attempt.body, chunked=attempt.chunked
        )
        statuses[exchange(server.port, request)[0]] += 1
    refused = [
        http_request("POST", f"/webhook/runpod/job-abc/{URL_TOKEN}?{'a' * 5000}", {}, b"{}"),
        http_request("POST", f"/webhook/runpod/job-abc/{URL_TOKEN} junk", {}, b"{}"),
        http_request(
            "POST",
            "/webhook/replicate/job-abc",
            {"Authorization": f"Bearer {BEARER}{' ' * 9000}"},
            b"{}",
        ),
        http_request("POST", "/webhook/openai", {"Authorization\x00": BASIC_HEADER}, b"{}"),
    ]
    for request in refused:
        statuses[exchange(server.port, request)[0]] += 1

    assert statuses[202] >= 3 and statuses[401] >= 10, statuses
    wait_for(lambda: "delivery rejected" in server.logged()[start:], timeout=10, message="log")
    text = server.logged()[start:]
    for value in secret_strings() + signature_values(batch):
        assert value not in text


def _access_lines(text: str) -> list[dict]:
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [entry for entry in entries if entry["logger"] == "gunicorn.access"]


@pytest.mark.e2e
def test_the_deployed_receiver_writes_no_access_log_line(gunicorn):
    """gunicorn logs every request whenever a logconfig is set, unless told otherwise
    (gunicorn.conf.py): the default must pay for no line per delivery."""
    server, _ = gunicorn
    start = len(server.logged())
    probe = uuid.uuid4().hex
    assert exchange(server.port, authentic_request(path_suffix=f"?probe={probe}"))[0] == 202
    # a rejected delivery logs a line of the app's after the probe's request
    exchange(server.port, http_request("POST", "/webhook/replicate/job-abc", {}, b"{}"))
    wait_for(lambda: "delivery rejected" in server.logged()[start:], timeout=10, message="log")

    text = server.logged()[start:]
    assert probe not in text
    assert _access_lines(text) == []


@pytest.mark.e2e
def test_gunicorn_access_log_1_logs_each_request_as_json_with_url_tokens_withheld(
    private_redis,
):
    server = Gunicorn(private_redis.url, access_log=True)
    try:
        probe = uuid.uuid4().hex
        assert exchange(server.port, authentic_request(path_suffix=f"?probe={probe}"))[0] == 202
        exchange(
            server.port, http_request("POST", f"/webhook/runpod/job-abc/{URL_TOKEN}", {}, b"{}")
        )
        # the job id forgotten: the token stands where the job id belongs
        exchange(server.port, http_request("POST", f"/webhook/runpod/{URL_TOKEN}", {}, b"{}"))
        wait_for(
            lambda: len(_access_lines(server.logged())) >= 3, timeout=10, message="access lines"
        )
        lines = _access_lines(server.logged())
    finally:
        server.stop()
        server.log.unlink(missing_ok=True)

    assert any(probe in line["message"] and " 202 " in line["message"] for line in lines), lines
    assert all(URL_TOKEN not in line["message"] for line in lines), lines


@pytest.mark.e2e
def test_an_authentic_deeply_nested_body_is_400_not_500_through_gunicorn(gunicorn):
    server, store = gunicorn
    queued = queued_in(store)
    body = b"[" * 3000 + b"]" * 3000
    path, headers = authentic("replicate", body)

    status, answer = exchange(server.port, http_request("POST", path, headers, body))

    assert queued_in(store) == queued
    assert status == 400, answer[:300]


MALFORMED_CHUNKED = {
    "chunk-size-not-hex": b"zz\r\n",
    "chunk-size-negative": b"-1\r\n",
    "chunk-without-terminator": b"5\r\nabcdeXX\r\n0\r\n\r\n",
    "invalid-trailer": b"2\r\n{}\r\n0\r\nX-Bad\r\n\r\n",
    "nul-in-chunk-extension": b"2;\x00\r\n{}\r\n0\r\n\r\n",
}


@pytest.mark.e2e
@pytest.mark.parametrize("chunks", MALFORMED_CHUNKED.values(), ids=MALFORMED_CHUNKED.keys())
def test_a_malformed_chunked_body_is_4xx_not_500_through_gunicorn(gunicorn, chunks):
    server, store = gunicorn
    queued = queued_in(store)
    head = (
        b"POST /webhook/replicate/job-abc HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    status, answer = exchange(server.port, head + chunks)

    assert queued_in(store) == queued
    assert 400 <= status < 500, answer[:300]


@pytest.mark.e2e
def test_a_malformed_request_carrying_a_token_does_not_put_it_in_the_gunicorn_log(gunicorn):
    """gunicorn echoes a malformed request line or header verbatim; the filter in
    gunicorn.conf.py (webhook_ingest.observability.json_logs) keeps who and why, not the text."""
    server, _ = gunicorn
    start = len(server.logged())
    malformed = [
        f"POST /webhook/runpod/job-abc/{URL_TOKEN}\r\nHost: x\r\n\r\n",
        f"POST  /webhook/runpod/job-abc/{URL_TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n",
        f"POST /webhook/replicate/job-abc HTTP/1.1\r\nHost: x\r\nAuthorization Bearer {BEARER}"
        "\r\n\r\n",
    ]
    for request in malformed:
        status, _ = exchange(server.port, request.encode())
        assert status == 400  # refused by gunicorn, as it should be

    wait_for(lambda: "Invalid request" in server.logged()[start:], timeout=10, message="log")
    text = server.logged()[start:]
    assert URL_TOKEN not in text
    assert BEARER not in text

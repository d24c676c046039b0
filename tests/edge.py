"""The edge, for real: gunicorn as the Procfile starts it, nginx with the shipped
recipe (deploy/nginx/webhook-ingest.conf), and clients that misbehave on purpose.

Used by tests/integration/test_slow_clients.py and test_reverse_proxy.py. Every
process and thread here stops by itself: servers are stopped by the fixtures,
the misbehaving clients after a time limit at the latest.
"""

from __future__ import annotations

import http.client
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ADMIN_TOKEN, REPLICATE_SECRET
from tests.support import free_port, signed_headers, wait_for

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RECIPE = ROOT / "deploy" / "nginx" / "webhook-ingest.conf"
# The web server's tuning variables: unset, so the shipped defaults are what is tested.
TUNING = (
    "WEB_CONCURRENCY",
    "WEB_THREADS",
    "WEB_WORKER_CLASS",
    "WEB_WORKER_CONNECTIONS",
    "WEB_HEADER_TIMEOUT_SECONDS",
    "WEB_BODY_TIMEOUT_SECONDS",
    "GUNICORN_ACCESS_LOG",
    "GUNICORN_CMD_ARGS",
    "TRUSTED_PROXY_COUNT",
    "FORWARDED_ALLOW_IPS",
)


class Web:
    """`gunicorn -c gunicorn.conf.py webhook_ingest.wsgi:app` (the Procfile's `web`) on a
    free port, state and broker on `redis_url`, the shipped defaults plus `env`."""

    def __init__(self, redis_url: str, **env: str) -> None:
        self.port = free_port()
        self.log = Path(tempfile.mkstemp(prefix="wi-edge-web-", suffix=".log")[1])
        self.env = {k: v for k, v in os.environ.items() if k not in TUNING}
        self.env.update(REDIS_URL=redis_url, CELERY_BROKER_URL=redis_url, PORT=str(self.port))
        self.env.update(env)
        self.process: subprocess.Popen | None = None

    def start(self) -> Web:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "webhook_ingest.wsgi:app"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._healthy, timeout=30, message=f"gunicorn to answer ({self.log})")
        return self

    def _healthy(self) -> bool:
        assert self.process.poll() is None, self.logged()
        return get("127.0.0.1", self.port, "/healthz", timeout=1)[0] == 200

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)
        self.log.unlink(missing_ok=True)

    def logged(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> list[int]:
        """The pids of gunicorn's worker processes (the master's children)."""
        import psutil

        return [child.pid for child in psutil.Process(self.process.pid).children()]

    def established(self) -> int:
        """TCP connections open to this server's port now (from any client)."""
        import psutil

        return sum(
            1
            for c in psutil.net_connections("tcp")
            if c.laddr and c.laddr.port == self.port and c.status == psutil.CONN_ESTABLISHED
        )


class Nginx:
    """nginx in the foreground with the shipped recipe, its two ADAPT lines pointed at
    `127.0.0.1:<free port>` and the receiver's port; everything else as shipped."""

    def __init__(self, upstream_port: int) -> None:
        self.binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
        assert self.binary, "nginx is needed for this test (make test installs it)"
        self.port = free_port()
        self.prefix = Path(tempfile.mkdtemp(prefix="wi-nginx-"))
        self.prefix.chmod(0o755)  # nginx's workers run as another user when we are root
        self.process: subprocess.Popen | None = None
        site = render(RECIPE.read_text(), self.port, upstream_port)
        (self.prefix / "webhook-ingest.conf").write_text(site)
        (self.prefix / "nginx.conf").write_text(self._main_conf())

    def _main_conf(self) -> str:
        p = self.prefix
        temp = " ".join(
            f"{name}_temp_path {p / name};" for name in ("client_body", "proxy", "fastcgi")
        )
        return (
            f"daemon off;\nworker_processes 1;\npid {p / 'nginx.pid'};\n"
            f"error_log {p / 'error.log'} info;\nevents {{ worker_connections 1024; }}\n"
            f"http {{\n  access_log {p / 'access.log'};\n  {temp}\n"
            f"  uwsgi_temp_path {p / 'uwsgi'}; scgi_temp_path {p / 'scgi'};\n"
            f"  include {p / 'webhook-ingest.conf'};\n}}\n"
        )

    def start(self) -> Nginx:
        args = [self.binary, "-p", str(self.prefix), "-e", str(self.prefix / "error.log")]
        args += ["-c", str(self.prefix / "nginx.conf")]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(self._listening, timeout=10, message=f"nginx to listen ({self.prefix})")
        return self

    def _listening(self) -> bool:
        assert self.process.poll() is None, (self.prefix / "error.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(15)
        shutil.rmtree(self.prefix, ignore_errors=True)


def render(recipe: str, port: int, upstream_port: int) -> str:
    """The recipe with its two ADAPT lines pointed at this test's ports."""
    swaps = {
        "listen 80;": f"listen 127.0.0.1:{port};",
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{upstream_port};",
    }
    for shipped, local in swaps.items():
        assert recipe.count(shipped) == 1, f"the recipe's {shipped!r} line moved"
        recipe = recipe.replace(shipped, local)
    return recipe


# -- well-behaved clients ---------------------------------------------------------------


def request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    timeout: float = 1.0,
    source: str | None = None,
    chunked: bool = False,
) -> tuple[int | str, float, bytes]:
    """(status or the error's name, seconds taken, body) of one request on a new
    connection, from the address `source` if given, the body chunked if asked."""
    started = time.monotonic()
    conn = http.client.HTTPConnection(
        host, port, timeout=timeout, source_address=(source, 0) if source else None
    )
    payload = body
    if chunked and body is not None:
        payload = (body[i : i + 16384] for i in range(0, len(body), 16384))
    try:
        conn.request(method, path, body=payload, headers=headers or {}, encode_chunked=chunked)
        answer = conn.getresponse()
        return answer.status, time.monotonic() - started, answer.read()
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__, time.monotonic() - started, b""
    finally:
        conn.close()


def get(host: str, port: int, path: str, **kwargs) -> tuple[int | str, float, bytes]:
    return request(host, port, "GET", path, **kwargs)


def delivery_body(job_id: str, size: int | None = None) -> bytes:
    """A Replicate prediction as JSON, padded to exactly `size` bytes if given."""
    document = {"id": f"pred-{job_id}", "status": "processing", "logs": ""}
    body = json.dumps(document).encode()
    if size is not None:
        document["logs"] = "x" * (size - len(body))
        body = json.dumps(document).encode()
        assert len(body) == size
    return body


def deliver(
    port: int,
    job_id: str,
    body: bytes | None = None,
    extra_headers: dict[str, str] | None = None,
    **kwargs,
) -> tuple[int | str, float, bytes]:
    """A Replicate delivery signed with the `standardwebhooks` signer."""
    body = delivery_body(job_id) if body is None else body
    headers = {**signed_headers(REPLICATE_SECRET, body), **(extra_headers or {})}
    return request(
        "127.0.0.1", port, "POST", f"/webhook/replicate/{job_id}", body, headers, **kwargs
    )


def register(port: int, job_id: str) -> None:
    """The job's mapping, as a connector registers it (POST /jobs)."""
    document = {"job_id": job_id, "provider": "replicate", "external_job_id": f"pred-{job_id}"}
    status, _, answer = request(
        "127.0.0.1",
        port,
        "POST",
        "/jobs",
        json.dumps(document).encode(),
        {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        timeout=5,
    )
    assert status == 201, answer


def new_job_id() -> str:
    return f"job-{uuid.uuid4().hex[:10]}"


# -- misbehaving clients ---------------------------------------------------------------

# A request whose header never ends: one more byte of it per interval. Long enough
# for minutes of trickling, short enough to stay under every header size limit.
ENDLESS_HEADER = b"POST /webhook/replicate/job-x HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 4000
# A complete header announcing a body that then arrives a byte per interval.
SLOW_BODY_HEAD = (
    b"POST /webhook/replicate/job-x HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n"
)


@dataclass
class Attacker:
    kind: str  # "idle", "trickle" or "slow-body"
    sock: socket.socket
    opened: float
    next_send: float
    sent: int = 0
    answer: bytes = b""


@dataclass
class Closed:
    kind: str
    lifetime: float
    answer: bytes


@dataclass
class Slowloris:
    """Keeps `idle` connections open that send nothing, `trickle` ones that send a
    request header a byte per `interval`, and `slow_body` ones that send a whole
    header and then the body a byte per `interval`. Each one the server closes is
    recorded (`closed`) and replaced at once, so the attack never lets up; all of it
    stops after `limit` seconds whatever happens."""

    port: int
    idle: int = 16
    trickle: int = 8
    slow_body: int = 0
    interval: float = 0.5
    limit: float = 60.0
    host: str = "127.0.0.1"
    closed: list[Closed] = field(default_factory=list)
    failed_opens: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> Slowloris:
        for kind, count in (("idle", self.idle), ("trickle", self.trickle)):
            for _ in range(count):
                self._open(kind)
        for _ in range(self.slow_body):
            self._open("slow-body")
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(10)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()
        self._selector.close()

    def closures(self, kind: str) -> list[Closed]:
        with self._lock:
            return [c for c in self.closed if c.kind == kind]

    def _open(self, kind: str) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=2)
        now = time.monotonic()
        if kind == "slow-body":
            sock.sendall(SLOW_BODY_HEAD)
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ, Attacker(kind, sock, now, now))

    def _run(self) -> None:
        ends = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < ends:
            for key, _ in self._selector.select(timeout=0.05):
                self._read(key.data)
            now = time.monotonic()
            for key in list(self._selector.get_map().values()):
                attacker = key.data
                if attacker.kind != "idle" and now >= attacker.next_send:
                    self._send_one_byte(attacker, now)

    def _send_one_byte(self, attacker: Attacker, now: float) -> None:
        attacker.next_send = now + self.interval
        if attacker.kind == "trickle":
            byte = ENDLESS_HEADER[attacker.sent : attacker.sent + 1] or b"a"
        else:
            byte = b"1"
        try:
            attacker.sock.send(byte)
            attacker.sent += 1
        except BlockingIOError:
            pass
        except OSError:
            self._replace(attacker)

    def _read(self, attacker: Attacker) -> None:
        try:
            data = attacker.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            attacker.answer += data
            return
        self._replace(attacker)

    def _replace(self, attacker: Attacker) -> None:
        """The server closed it: record how long it lived, and open another."""
        self._selector.unregister(attacker.sock)
        attacker.sock.close()
        lifetime = time.monotonic() - attacker.opened
        with self._lock:
            self.closed.append(Closed(attacker.kind, lifetime, attacker.answer))
        if not self._stop.is_set():
            try:
                self._open(attacker.kind)
            except OSError:
                self.failed_opens += 1

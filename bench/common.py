"""What every part of the bench shares: the private Redis, the service's processes,
signing as a provider does, bulk job registration, and small statistics.

Signatures are made with the `standardwebhooks` package, never with the product's
code, as in tests/support.py.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import redis
from standardwebhooks import Webhook

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PROVIDER = "replicate"
QUEUE = "webhook_ingest"  # celeryconfig.task_default_queue: the broker list deliveries wait in
# Where the receiver queues a delivery whose job has no mapping yet (celeryconfig):
# the receiver benchmark's deliveries name jobs nobody registered, so they wait here.
UNMATCHED_QUEUE = "webhook_ingest.unmatched"
# A Replicate `processing` prediction whose logs carry tqdm progress: normalized to 50 %.
LOGS = " 50%|#####     | 50/100 [00:01<00:01, 49.1it/s]\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# -- processes ------------------------------------------------------------------


class Processes:
    """Every process the bench starts, each in its own session (process group), so
    stopping one stops its children (gunicorn's and celery's workers) too."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed by the child's exit
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.running[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 20) -> None:
        proc = self.running.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        # The store last: the others may still be finishing a write.
        for name in sorted(self.running, key=lambda n: n.startswith("redis")):
            try:
                self.stop(name)
            except Exception as exc:  # keep stopping the rest
                print(f"bench: could not stop {name}: {exc}", file=sys.stderr)


def start_redis(
    procs: Processes, data_dir: Path, name: str = "redis", *extra: str
) -> tuple[str, redis.Redis]:
    """A redis-server of the bench's own, configured as production would run it;
    `name` (starting with "redis", so it is stopped last) for a second one, and
    `extra` options (e.g. --replicaof) after the production ones."""
    binary = shutil.which("redis-server")
    if not binary:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    procs.spawn(
        name,
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--save",
            "",
            "--dir",
            str(data_dir),
            *extra,
        ],
        dict(os.environ),
    )
    client = redis.Redis(port=port, decode_responses=True)
    wait_for(lambda: _pings(client), 15, "the private redis-server")
    return f"redis://127.0.0.1:{port}/0", client


def _pings(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.RedisError:
        return False


def http_ok(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


# -- signing and deliveries -----------------------------------------------------


def prediction_body(external_id: str) -> str:
    return json.dumps({"id": external_id, "status": "processing", "logs": LOGS})


class Signer:
    """Signs as a Standard Webhooks sender (Replicate) does; one timestamp per batch."""

    def __init__(self, secret: str) -> None:
        self._webhook = Webhook(secret)

    def sign_batch(self, items: Iterable[tuple[str, str]]) -> list[tuple[str, str, str, str]]:
        """(delivery id, body) -> (delivery id, timestamp, signature, body)."""
        moment = datetime.now(tz=UTC)
        stamp = str(int(moment.timestamp()))
        sign = self._webhook.sign
        return [(msg_id, stamp, sign(msg_id, moment, body), body) for msg_id, body in items]


def run_id() -> str:
    return uuid.uuid4().hex[:6]


# -- bulk registration ----------------------------------------------------------


class BulkRegistrar:
    """Registers jobs through the product's own registry script, pipelined.

    `JobRegistry.register` makes one round trip per job; for 100k jobs that is most of
    the bench's time budget. So the registry's own Lua script object is called on a
    pipeline with the keys and arguments `register` passes. Before trusting that, one
    job is registered both ways and the Redis data compared; if the product's
    registry changed shape, the bench falls back to `register` one job at a time.
    """

    def __init__(self, client: redis.Redis, services) -> None:
        from webhook_ingest.state.job_registry import JobRegistry

        self._client = client
        self._registry = JobRegistry(client)
        self._script = getattr(self._registry, "_register", None)
        self.pipelined = self._script is not None and self._same_as_register()

    def _args(self, job_id: str, external_id: str, now: int):
        from webhook_ingest.state import keys

        return {
            "keys": [
                keys.job_mapping(job_id),
                keys.external_index(PROVIDER, external_id),
                keys.live_jobs(PROVIDER),
                keys.job_state(job_id),
            ],
            "args": [job_id, PROVIDER, external_id, now],
        }

    def _same_as_register(self) -> bool:
        from webhook_ingest.clock import now_ms
        from webhook_ingest.state import keys

        tag = uuid.uuid4().hex[:8]
        a, b = f"bench-check-a-{tag}", f"bench-check-b-{tag}"
        try:
            self._registry.register(a, PROVIDER, f"ext-{a}")
            now = now_ms()
            with self._client.pipeline(transaction=False) as pipe:
                self._script(**self._args(b, f"ext-{b}", now), client=pipe)
                pipe.execute()
            same = self._snapshot(a) == self._snapshot(b)
        except Exception:
            same = False
        finally:
            for job in (a, b):
                self._client.delete(
                    keys.job_mapping(job), keys.external_index(PROVIDER, f"ext-{job}")
                )
                self._client.zrem(keys.live_jobs(PROVIDER), job)
        return same

    def _snapshot(self, job_id: str):
        from webhook_ingest.state import keys

        mapping = self._client.hgetall(keys.job_mapping(job_id))
        return (
            sorted(mapping),
            mapping.get("provider"),
            self._client.get(keys.external_index(PROVIDER, f"ext-{job_id}")) == job_id,
            self._client.zscore(keys.live_jobs(PROVIDER), job_id) is not None,
            sorted(k.replace(job_id, "J") for k in self._client.scan_iter(f"*{job_id}*")),
        )

    def register(self, jobs: list[tuple[str, str]], now: int | None = None) -> None:
        """(job id, external id) pairs, registered as of `now` (ms; default: now)."""
        from webhook_ingest.clock import now_ms

        if not self.pipelined:
            from webhook_ingest.state import keys

            for job_id, external_id in jobs:
                self._registry.register(job_id, PROVIDER, external_id)
                if now is not None:  # `register` has no clock: backdate the live index only
                    self._client.zadd(keys.live_jobs(PROVIDER), {job_id: now}, xx=True)
            return
        stamp = now_ms() if now is None else now
        for start in range(0, len(jobs), 2000):
            with self._client.pipeline(transaction=False) as pipe:
                for job_id, external_id in jobs[start : start + 2000]:
                    self._script(**self._args(job_id, external_id, stamp), client=pipe)
                replies = pipe.execute()
            bad = [r for r in replies if r != "created"]
            if bad:
                raise RuntimeError(f"registration answered {bad[0]!r} ({len(bad)} times)")


# -- statistics -----------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def pair(first: float | None, second: float | None) -> dict:
    """Two runs of one figure: both, the mean and the spread (max - min) / mean."""
    values = [v for v in (first, second) if v is not None]
    mean = statistics.fmean(values) if values else None
    spread = (max(values) - min(values)) / mean if len(values) == 2 and mean else None
    return {"run1": first, "run2": second, "mean": mean, "spread": spread}

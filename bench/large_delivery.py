"""What one large delivery costs in memory: a RunPod completion at its 20 MiB limit.

`python -m bench.large_delivery [MiB]` (default 20) starts a private Redis, the
receiver under gunicorn (one gevent worker, as the Procfile starts it) and a
Celery worker (solo pool), sends one RunPod COMPLETED of that size to its
per-job URL, waits for the job to be completed, and prints each process's peak
resident memory (VmHWM) before and after, as JSON. Then the same delivery is
received and applied again in this process under tracemalloc, which counts the
Python allocations of the receiver's request and of `ingest` (what the task
calls) separately, and of decoding the queued message as kombu's Redis
transport does: peak over the body's size says how many copies are alive at once
beside the delivery itself. Not a test: figures for docs/benchmarks.md, not bounds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

MIB = 1024 * 1024
SECRET = "bench-" + base64.urlsafe_b64encode(os.urandom(24)).decode()


def token_of(job_id: str) -> str:
    mac = hmac.new(SECRET.encode(), job_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def completion(external_id: str, size: int) -> bytes:
    """A COMPLETED status object of exactly `size` bytes, its output one base64 image."""
    document = {"id": external_id, "status": "COMPLETED", "output": {"image": ""}}
    padding = size - len(json.dumps(document))
    document["output"]["image"] = base64.b64encode(os.urandom(padding))[:padding].decode()
    body = json.dumps(document).encode()
    assert len(body) == size
    return body


def peak_rss(pid: int) -> int:
    """The process's high-water resident set (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def children(pid: int) -> list[int]:
    import psutil

    return [child.pid for child in psutil.Process(pid).children(recursive=True)]


def processes(size: int, env: dict[str, str]) -> dict:
    import requests

    from bench.common import BIN, Processes, free_port, http_ok, wait_for
    from webhook_ingest.services import build_services

    port = free_port()
    env = {**env, "PORT": str(port), "WEB_CONCURRENCY": "1"}
    procs = Processes(Path(tempfile.mkdtemp(prefix="wi-large-")))
    try:
        web_args = ["-c", "gunicorn.conf.py", "webhook_ingest.wsgi:app"]
        web = procs.spawn("web", [str(BIN / "gunicorn"), *web_args], env)
        worker_args = ["-A", "workers", "worker", "--pool=solo", "--loglevel=WARNING"]
        worker = procs.spawn("worker", [str(BIN / "celery"), *worker_args], env)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 30, "gunicorn")
        services = build_services(environ=env)
        time.sleep(5)  # the worker's start settles
        [web_worker] = children(web.pid)
        before = {"web": peak_rss(web_worker), "worker": peak_rss(worker.pid)}

        job_id = "job-large-proc"
        services.jobs.register(job_id, "runpod", "rp-large-proc")
        body = completion("rp-large-proc", size)
        started = time.monotonic()
        answer = requests.post(
            f"http://127.0.0.1:{port}/webhook/runpod/{job_id}/{token_of(job_id)}",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        answered = time.monotonic() - started
        assert answer.status_code == 202, answer.text
        wait_for(
            lambda: services.redis.hget(f"job_state:{job_id}", "status") == "completed",
            60,
            "the completion to be applied",
        )
        applied = time.monotonic() - started
        stored = services.redis.hget(f"job_state:{job_id}", "result")
        assert json.loads(stored) == json.loads(body)["output"]
        after = {"web": peak_rss(web_worker), "worker": peak_rss(worker.pid)}
        return {
            "answered_seconds": round(answered, 2),
            "applied_seconds": round(applied, 2),
            **{
                f"{name}_peak_rss_mib": {
                    "before": round(before[name] / MIB, 1),
                    "after": round(after[name] / MIB, 1),
                    "growth_in_bodies": round((after[name] - before[name]) / size, 2),
                }
                for name in before
            },
        }
    finally:
        procs.stop_all()


def in_process(size: int, env: dict[str, str]) -> dict:
    """tracemalloc peaks of the receiver's request and of ingest, in bodies."""
    from werkzeug.test import EnvironBuilder

    from webhook_ingest.handoff import broker
    from webhook_ingest.handoff.delivery import Delivery
    from webhook_ingest.ingest import ingest
    from webhook_ingest.services import build_services
    from webhook_ingest.web.app import create_app

    services = build_services(environ=env)
    app = create_app(services, broker.celery_app(services.settings))
    job_id = "job-large-mem"
    services.jobs.register(job_id, "runpod", "rp-large-mem")
    body = completion("rp-large-mem", size)
    request = EnvironBuilder(
        path=f"/webhook/runpod/{job_id}/{token_of(job_id)}",
        method="POST",
        data=body,
        headers={"Content-Type": "application/json"},
    ).get_environ()
    del body

    def start_response(status, headers, exc_info=None):
        assert status.startswith("202"), status

    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    b"".join(app(request, start_response))
    receiver_peak = tracemalloc.get_traced_memory()[1] - baseline
    tracemalloc.stop()

    # The message as the worker receives it (kombu's Redis transport: base64 of the
    # task's JSON), taken off the queue here instead.
    raw = services.redis.rpop("webhook_ingest")
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    envelope = json.loads(raw)
    del raw
    args, _, _ = json.loads(base64.b64decode(envelope.pop("body")))
    delivery = Delivery.from_message(args[0])
    del args, envelope
    decode_peak = tracemalloc.get_traced_memory()[1] - baseline
    tracemalloc.reset_peak()
    baseline = tracemalloc.get_traced_memory()[0]
    result = ingest(delivery, services)
    ingest_peak = tracemalloc.get_traced_memory()[1] - baseline
    tracemalloc.stop()
    assert result.outcome.value == "applied", result
    return {
        "receiver_request_peak_in_bodies": round(receiver_peak / size, 2),
        "worker_message_decode_peak_in_bodies": round(decode_peak / size, 2),
        "worker_ingest_peak_in_bodies": round(ingest_peak / size, 2),
    }


def main(mib: float) -> None:
    from bench.common import Processes, start_redis

    size = int(mib * MIB)
    procs = Processes(Path(tempfile.mkdtemp(prefix="wi-large-redis-")))
    try:
        redis_url, client = start_redis(procs, Path(tempfile.mkdtemp(prefix="wi-large-data-")))
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "WEBHOOK_URL_SECRET_RUNPOD": SECRET,
            "LOG_LEVEL": "WARNING",
        }
        for name in ("WEBHOOK_URL_TOKEN_RUNPOD", "MAX_BODY_BYTES_RUNPOD"):
            env.pop(name, None)
        figures = {"body_mib": mib, **processes(size, env)}
        client.flushall()
        figures.update(in_process(size, env))
        print(json.dumps(figures, indent=2))
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 20)

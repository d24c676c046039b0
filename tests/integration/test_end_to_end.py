"""The real processes: gunicorn serving the receiver and a Celery worker, on a Redis of
their own, driven over HTTP the way providers and operators drive them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
import requests

from tests.conftest import ADMIN_TOKEN, OPENAI_SECRET, REPLICATE_SECRET
from tests.support import PrivateRedis, Subscriber, body_of, free_port, signed_headers, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class Service:
    """gunicorn + celery worker as subprocesses, as the Procfile runs them."""

    def __init__(self, redis_url: str, extra_env: dict[str, str]) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            **extra_env,
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "PORT": str(self.port),
            "WEB_CONCURRENCY": "2",
        }
        self.web: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.logs = Path(f"/tmp/wi-e2e-{uuid.uuid4().hex[:8]}")
        self.logs.mkdir()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        return subprocess.Popen(
            args,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_web(self) -> None:
        self.web = self._spawn(
            "web", str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "webhook_ingest.wsgi:app"
        )
        wait_for(self._ready, timeout=30, message=f"gunicorn to be ready ({self.logs})")

    def start_worker(self) -> None:
        self.worker = self._spawn(
            "worker",
            str(BIN / "python"),
            "-m",
            "workers.run",  # as the Procfile starts it
            "worker",
            "--concurrency=2",
            "--loglevel=INFO",
            f"--hostname=e2e-{uuid.uuid4().hex[:6]}@%h",
        )

    def stop_worker(self, sig: int = signal.SIGTERM) -> None:
        if self.worker and self.worker.poll() is None:
            os.killpg(self.worker.pid, sig)
            self.worker.wait(30)

    def stop(self) -> None:
        self.stop_worker()
        if self.web and self.web.poll() is None:
            os.killpg(self.web.pid, signal.SIGTERM)
            self.web.wait(30)

    def _ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except requests.RequestException:
            return False


@pytest.fixture
def private_redis():
    server = PrivateRedis("--appendonly", "yes").start()
    yield server
    server.cleanup()


@pytest.fixture
def service(private_redis, fake_api):
    svc = Service(private_redis.url, {"OPENAI_BASE_URL": f"{fake_api.url}/v1"})
    svc.start_web()
    svc.start_worker()
    yield svc
    svc.stop()


def post_signed(service, path, payload, secret=REPLICATE_SECRET):
    body = body_of(payload)
    return requests.post(
        f"{service.url}{path}", data=body, headers=signed_headers(secret, body), timeout=5
    )


def register(service, job_id, provider, external_id):
    answer = requests.post(
        f"{service.url}/jobs",
        json={"job_id": job_id, "provider": provider, "external_job_id": external_id},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=5,
    )
    assert answer.status_code == 201, answer.text


def test_replicate_lifecycle_over_http(service, private_redis):
    store = redis.Redis.from_url(private_redis.url, decode_responses=True)
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    register(service, job_id, "replicate", "pred-e2e")
    subscriber = Subscriber(store, f"job_progress:{job_id}")

    for prediction in (
        {"status": "starting"},
        {"status": "processing", "logs": " 50%|#####     | 50/100 [00:01<00:01]\n"},
        {"status": "succeeded", "output": ["https://cdn/x.png"]},
    ):
        answer = post_signed(
            service, f"/webhook/replicate/{job_id}", {"id": "pred-e2e", **prediction}
        )
        assert answer.status_code == 202
        assert answer.json() == {"received": True}

    wait_for(lambda: store.hget(f"job_state:{job_id}", "status") == "completed", timeout=20)
    shown = requests.get(
        f"{service.url}/jobs/{job_id}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=5,
    ).json()
    assert shown["state"]["progress"] == "100"
    assert shown["mapping"]["external_job_id"] == "pred-e2e"
    statuses = [message["status"] for _, message in subscriber.drain(settle=1.0)]
    assert statuses[-1] == "completed"
    subscriber.close()


def test_deliveries_accepted_while_the_worker_is_down_are_applied_after_restart(
    service, private_redis
):
    store = redis.Redis.from_url(private_redis.url, decode_responses=True)
    service.stop_worker()
    jobs = [f"job-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    for index, job_id in enumerate(jobs):
        register(service, job_id, "replicate", f"pred-{index}")
        answer = post_signed(
            service, f"/webhook/replicate/{job_id}", {"id": f"pred-{index}", "status": "succeeded"}
        )
        assert answer.status_code == 202
    assert store.llen("webhook_ingest") == len(jobs)  # durable on the broker, not yet applied

    service.start_worker()

    wait_for(
        lambda: all(store.hget(f"job_state:{j}", "status") == "completed" for j in jobs),
        timeout=30,
        message="every accepted delivery to be applied after the restart",
    )


def test_openai_webhook_through_the_real_processes(service, private_redis, fake_api):
    store = redis.Redis.from_url(private_redis.url, decode_responses=True)
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    response_id = f"resp_{uuid.uuid4().hex[:8]}"
    register(service, job_id, "openai", response_id)
    fake_api.respond(
        "GET",
        f"/v1/responses/{response_id}",
        (
            200,
            {
                "id": response_id,
                "status": "incomplete",
                "incomplete_details": {"reason": "max_output_tokens"},
            },
        ),
    )
    event = {
        "object": "event",
        "id": "evt_1",
        "type": "response.incomplete",
        "created_at": 1750287018,
        "data": {"id": response_id},
    }

    assert post_signed(service, "/webhook/openai", event, secret=OPENAI_SECRET).status_code == 202

    wait_for(lambda: store.hget(f"job_state:{job_id}", "status") == "failed", timeout=20)
    assert "max_output_tokens" in store.hget(f"job_state:{job_id}", "error_message")

"""Operability of the real processes: gunicorn's workers summed on /metrics, the Celery
worker's own metrics port, JSON log lines without secrets, Flower behind basic auth."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_TOKEN, REPLICATE_SECRET
from tests.integration.test_end_to_end import BIN, ROOT, Service
from tests.support import PrivateRedis, body_of, free_port, signed_headers, wait_for

pytestmark = pytest.mark.e2e

BODY_MARKER = "output-that-must-not-be-logged-" + uuid.uuid4().hex


def total(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture
def private_redis():
    server = PrivateRedis("--appendonly", "yes").start()
    yield server
    server.cleanup()


@pytest.fixture
def service(private_redis, fake_api):
    svc = Service(private_redis.url, {"WORKER_METRICS_PORT": str(free_port())})
    yield svc
    svc.stop()


def deliver(service, job_id: str, payload: dict) -> requests.Response:
    body = body_of(payload)
    headers = signed_headers(REPLICATE_SECRET, body)
    return requests.post(
        f"{service.url}/webhook/replicate/{job_id}", data=body, headers=headers, timeout=5
    )


def register(service, job_id: str, external_id: str) -> None:
    answer = requests.post(
        f"{service.url}/jobs",
        json={"job_id": job_id, "provider": "replicate", "external_job_id": external_id},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=5,
    )
    assert answer.status_code == 201, answer.text


def test_metrics_sums_every_gunicorn_worker(service):
    service.start_web()
    sent = 40
    for i in range(sent):
        assert (
            deliver(service, f"job-m{i}", {"id": f"p{i}", "status": "starting"}).status_code == 202
        )

    # Each scrape is answered by one of the two workers; each must report all of them.
    seen = [
        total(
            requests.get(f"{service.url}/metrics", timeout=5).text,
            "webhook_deliveries_received_total",
            provider="replicate",
            outcome="accepted",
        )
        for _ in range(8)
    ]

    assert seen == [sent] * 8


def test_the_worker_serves_its_own_metrics_summed_over_its_pool(service):
    service.start_web()
    service.start_worker()  # prefork, two children
    port = service.env["WORKER_METRICS_PORT"]
    jobs = [f"job-w{i}-{uuid.uuid4().hex[:6]}" for i in range(10)]
    for i, job_id in enumerate(jobs):
        register(service, job_id, f"pred-w{i}")
        deliver(service, job_id, {"id": f"pred-w{i}", "status": "succeeded", "output": "x"})

    def applied() -> float:
        try:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except requests.RequestException:
            return 0
        return total(text, "webhook_deliveries_processed_total", outcome="applied")

    wait_for(lambda: applied() == len(jobs), timeout=30, message="worker metrics to count all")
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    assert total(text, "webhook_receive_to_applied_seconds_count") == len(jobs)
    assert total(text, "webhook_state_updates_total") >= len(jobs)


def listening_addresses(port: int) -> set[str]:
    return {
        conn.laddr.ip
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
    }


@pytest.mark.parametrize(
    ("address", "expected"),
    [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")],  # noqa: S104 - asked for
    ids=["loopback-by-default", "all-interfaces-when-asked"],
)
def test_the_worker_metrics_port_listens_on_loopback_unless_told_otherwise(
    service, address, expected
):
    # Issue 14, finding 8: it listened on every interface, whatever the network.
    service.env.pop("WORKER_METRICS_ADDRESS", None)
    if address is not None:
        service.env["WORKER_METRICS_ADDRESS"] = address
    port = int(service.env["WORKER_METRICS_PORT"])
    service.start_worker()

    seen = wait_for(
        lambda: listening_addresses(port), timeout=30, message="the worker's metrics port"
    )

    assert seen == {expected}


@pytest.mark.parametrize(
    ("address", "expected"),
    [(None, "0.0.0.0"), ("127.0.0.1", "127.0.0.1")],  # noqa: S104 - the documented default
    ids=["every-interface-by-default", "loopback-when-asked"],
)
def test_the_receiver_listens_on_bind_address(service, address, expected):
    # Issue 14, finding 8: gunicorn.conf.py bound 0.0.0.0 whatever the operator wanted.
    service.env.pop("BIND_ADDRESS", None)  # the service's default, not make run's
    if address is not None:
        service.env["BIND_ADDRESS"] = address

    service.start_web()

    assert listening_addresses(service.port) == {expected}


def test_the_receiver_refuses_a_bad_bind_address_at_start(service):
    service.env["BIND_ADDRESS"] = "receiver.example.com"

    service.web = service._spawn(  # stopped by the fixture if it does start
        "web", str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "webhook_ingest.wsgi:app"
    )

    assert service.web.wait(30) != 0
    log = read(service, "web")
    assert "BIND_ADDRESS" in log
    assert "Traceback" not in log


def test_every_process_logs_json_lines_with_ids_and_without_bodies_or_secrets(service):
    service.start_web()
    service.start_worker()
    job_id = f"job-log-{uuid.uuid4().hex[:6]}"
    register(service, job_id, "pred-log")
    payload = {"id": "pred-log", "status": "succeeded", "output": BODY_MARKER}
    body = body_of(payload)
    headers = signed_headers(REPLICATE_SECRET, body)
    answer = requests.post(
        f"{service.url}/webhook/replicate/{job_id}", data=body, headers=headers, timeout=5
    )
    assert answer.status_code == 202

    def worker_lines() -> list[dict]:
        lines = read(service, "worker").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    applied = wait_for(
        lambda: [e for e in worker_lines() if e.get("message") == "delivery applied"],
        timeout=30,
        message="the worker's applied line",
    )
    assert applied[0]["delivery_id"] == headers["webhook-id"]
    assert applied[0]["job_id"] == job_id
    assert applied[0]["provider"] == "replicate"
    accepted = [
        json.loads(line)
        for line in read(service, "web").splitlines()
        if '"delivery accepted"' in line
    ]
    assert [e["delivery_id"] for e in accepted] == [headers["webhook-id"]]

    for name in ("web", "worker"):
        text = read(service, name)
        assert BODY_MARKER not in text
        assert headers["webhook-signature"].split(",")[1] not in text
        assert REPLICATE_SECRET not in text
        assert ADMIN_TOKEN not in text
        for line in text.splitlines():
            # Log records are JSON; only start-up prints (Celery's banner, Python's
            # warnings) are not, and those never name a delivery.
            if line.startswith("{") or headers["webhook-id"] in line or job_id in line:
                json.loads(line)


def read(service, name: str) -> str:
    return (service.logs / f"{name}.log").read_text(errors="replace")


# -- the command line -----------------------------------------------------------------


def test_check_config_prints_redis_and_broker_urls_without_their_passwords():
    # Issue 14, finding 6: `webhook-ingest check-config` printed REDIS_URL as set.
    password = "pw-" + uuid.uuid4().hex
    env = {
        **os.environ,
        "REDIS_URL": f"redis://:{password}@127.0.0.1:6379/0",
        "CELERY_BROKER_URL": f"amqp://ops:{password}@rabbit.internal:5672/jobs",
    }

    run = subprocess.run(
        [str(BIN / "webhook-ingest"), "check-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # The broker does not answer (a host that does not exist): the preflight
    # fails (issue 17), and says so naming each server without its password.
    assert run.returncode == 1, run.stderr
    assert password not in run.stdout + run.stderr
    shown = run.stdout.splitlines() + run.stderr.splitlines()
    # (ok or unreachable: a Redis without a password configured may accept one anyway)
    assert any(
        line.removeprefix("ERROR ").startswith("redis: redis://:***@127.0.0.1:6379/0 ")
        for line in shown
    ), shown
    assert any(
        line.startswith("ERROR broker: amqp://ops:***@rabbit.internal:5672/jobs unreachable (")
        for line in shown
    ), shown


@pytest.mark.parametrize("url", ["unix:///var/run/redis/redis.sock", "unix:///tmp/redis.sock?db=2"])
def test_check_config_refuses_a_unix_socket_redis_url_naming_the_variable(url):
    # Issue 14, finding 8: unix:// passed validation, then the broker, the rate
    # limiter and beat (which read the URL as a TCP server's) failed at run time.
    run = subprocess.run(
        [str(BIN / "webhook-ingest"), "check-config"],
        env={**os.environ, "REDIS_URL": url, "CELERY_BROKER_URL": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert run.returncode != 0
    assert "REDIS_URL" in run.stderr
    assert "unix" in run.stderr
    assert "Traceback" not in run.stderr


# -- Flower -------------------------------------------------------------------------


def test_flower_refuses_an_open_address_without_basic_auth():
    from workers.flower import command

    with pytest.raises(SystemExit, match="FLOWER_BASIC_AUTH"):
        command({"FLOWER_ADDRESS": "0.0.0.0"})
    assert "--address=127.0.0.1" in command({})
    assert "--address=0.0.0.0" in command(
        {"FLOWER_ADDRESS": "0.0.0.0", "FLOWER_BASIC_AUTH": "ops:pw"}
    )


@contextlib.contextmanager
def flower_for(service, user: str = "ops", password: str = "s3cret-pw"):
    """Flower as the Procfile starts it, behind basic auth; yields its base URL."""
    port = free_port()
    env = {**service.env, "FLOWER_BASIC_AUTH": f"{user}:{password}", "FLOWER_PORT": str(port)}
    flower = subprocess.Popen(
        [sys.executable, "-m", "workers.flower"],
        cwd=ROOT,
        env={**env, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"},
        stdout=open(service.logs / "flower.log", "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return requests.get(base, timeout=1).status_code == 401
            except requests.RequestException:
                return False

        wait_for(up, timeout=30, message="Flower to answer")
        yield base
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        flower.wait(30)


def flower_ingest_tasks(base: str) -> list[dict]:
    tasks = requests.get(f"{base}/api/tasks", auth=("ops", "s3cret-pw"), timeout=2)
    assert tasks.status_code == 200
    return [t for t in tasks.json().values() if t.get("name") == "webhook_ingest.ingest"]


def test_flower_asks_for_basic_auth_and_shows_readable_tasks_without_payloads(service):
    service.start_web()
    service.start_worker()
    with flower_for(service) as base:
        assert (
            requests.get(f"{base}/api/tasks", auth=("ops", "wrong"), timeout=2).status_code == 401
        )

        job_id = f"job-fl-{uuid.uuid4().hex[:6]}"
        register(service, job_id, "pred-fl")

        def ingest_tasks() -> list[dict]:
            # Flower switches the workers' events on within seconds; deliver until seen.
            deliver(service, job_id, {"id": "pred-fl", "status": "processing", "x": BODY_MARKER})
            return flower_ingest_tasks(base)

        seen = wait_for(ingest_tasks, timeout=45, interval=1, message="Flower to see a task")
        assert seen[0]["args"].startswith("<replicate delivery msg_")
        assert BODY_MARKER not in json.dumps(seen)
        # The broker page's data: Flower named its broker client after the URL's
        # scheme, and with the worker's own transport answered 404 "broker is not
        # supported" (workers/flower_app.py).
        assert "webhook_ingest" in flower_queue_lengths(base)


def flower_queue_lengths(base: str) -> dict[str, int]:
    """Flower's `/api/queues/length` (its broker page): {queue: messages}."""
    answer = requests.get(f"{base}/api/queues/length", auth=("ops", "s3cret-pw"), timeout=5)
    assert answer.status_code == 200, answer.text
    return {queue["name"]: queue["messages"] for queue in answer.json()["active_queues"]}


def test_flower_shows_no_payload_for_any_attempt_of_a_retried_delivery(service):
    # Issue 14, finding 6: Celery's task.retry publishes the retry with its default
    # argsrepr, the repr of the whole message (body and headers): every attempt after
    # the first showed the payload in Flower.
    service.start_web()
    service.start_worker()
    header_marker = "agent-that-must-not-show-" + uuid.uuid4().hex
    with flower_for(service) as base:
        known = f"job-fl-{uuid.uuid4().hex[:6]}"
        register(service, known, "pred-fl")

        def events_on() -> list[dict]:
            deliver(service, known, {"id": "pred-fl", "status": "processing"})
            return flower_ingest_tasks(base)

        wait_for(events_on, timeout=45, interval=1, message="Flower to see a task")

        # A job nobody registered: retried until UNMATCHED_RETRY_SECONDS (4 s), then parked.
        body = body_of({"id": "pred-nobody", "status": "succeeded", "output": BODY_MARKER})
        headers = {**signed_headers(REPLICATE_SECRET, body), "User-Agent": header_marker}
        answer = requests.post(
            f"{service.url}/webhook/replicate/job-fl-unknown",
            data=body,
            headers=headers,
            timeout=5,
        )
        assert answer.status_code == 202
        label = f"<replicate delivery {headers['webhook-id']}>"
        shown: list[dict] = []

        def parked() -> bool:
            # every state Flower shows on the way, not only the last one
            mine = [t for t in flower_ingest_tasks(base) if headers["webhook-id"] in str(t)]
            shown.extend(mine)
            return any(t.get("retries", 0) >= 1 and t.get("state") == "SUCCESS" for t in mine)

        wait_for(parked, timeout=60, interval=0.3, message="the retried delivery to be parked")

    assert any(t["retries"] >= 1 for t in shown)
    text = json.dumps(shown)
    assert BODY_MARKER not in text
    assert header_marker not in text
    assert "webhook-timestamp" not in text  # the kept headers travel in the message only
    assert {t["args"] for t in shown} == {label}

"""Redis Sentinel (issue 18, items 1 and 3): one redis+sentinel:// URL for every
client, check-config shows what the sentinels say, and a failover is answered
503 with Retry-After and healed without a restart.

A Sentinel deployment of this module's own (tests/sentinel_cluster.py: a master,
two replicas, three sentinels, real redis-server processes). The receiver here is
the app the web process builds, in this process; the whole service through a
master's SIGKILL under a stream is tests/faults/test_faults_sentinel.py.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from tests.conftest import REPLICATE_SECRET
from tests.sentinel_cluster import MASTER, SentinelCluster
from tests.support import body_of, client_for, free_port, signed_headers, wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def cluster():
    deployment = SentinelCluster(replicas=2, sentinels=3).start()
    yield deployment
    deployment.cleanup()


def check_config(url: str) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "REDIS_URL": url}
    env.pop("CELERY_BROKER_URL", None)  # the broker is REDIS_URL's master too
    return subprocess.run(
        [str(BIN / "webhook-ingest"), "check-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_check_config_shows_the_sentinels_and_reaches_the_master_through_them(cluster):
    done = check_config(cluster.url(2))

    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout.splitlines()
    assert f"redis: {cluster.url(2)} ok" in out
    assert f"broker: {cluster.url(2)} ok" in out
    sentinels = next(line for line in out if line.startswith("sentinels:"))
    assert f"3 of 3 answer for '{MASTER}' (quorum 2)" in sentinels
    assert f"master 127.0.0.1:{cluster.master_port()}, 2 replicas, flags master" in sentinels


def test_a_sentinel_that_does_not_answer_is_a_warning_none_answering_an_error(cluster):
    dead = free_port()
    hosts = ",".join(f"127.0.0.1:{port}" for port in [*cluster.sentinel_ports, dead])
    done = check_config(f"redis+sentinel://{hosts}/{MASTER}/2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"WARNING sentinels not answering: 127.0.0.1:{dead}" in done.stdout

    done = check_config(f"redis+sentinel://127.0.0.1:{dead}/{MASTER}/2")
    assert done.returncode == 1
    assert f"ERROR redis: redis+sentinel://127.0.0.1:{dead}/{MASTER}/2 unreachable" in (
        done.stdout + done.stderr
    )
    assert "sentinels: none of" in done.stdout


def test_a_failover_is_answered_503_with_retry_after_and_heals_without_a_restart(cluster):
    from tests.support import environ_with
    from webhook_ingest.handoff import broker
    from webhook_ingest.services import build_services

    url = cluster.url(3)
    # every 2xx waits for a replica (WAIT), so what was acknowledged before the
    # kill is on whichever replica the sentinels promote
    environ = environ_with(REDIS_URL=url, CELERY_BROKER_URL=url, REDIS_MIN_REPLICA_ACKS=1)
    services = build_services(environ=environ)
    celery_app = broker.celery_app(services.settings)
    client = client_for(services, celery_app)
    run = uuid.uuid4().hex[:8]

    def deliver(n: int):
        payload = {"id": f"pred-{run}-{n}", "status": "processing", "logs": "", "output": None}
        body = body_of(payload)
        return client.post(
            f"/webhook/replicate/job-{run}-{n}",
            data=body,
            headers=signed_headers(REPLICATE_SECRET, body, msg_id=f"msg-{run}-{n}"),
        )

    assert client.get("/readyz").status_code == 200
    assert deliver(1).status_code == 202

    old = cluster.kill_master()
    # Before the sentinels promote a replica: no master answers.
    during = client.get("/readyz")
    assert during.status_code == 503
    assert during.headers["Retry-After"]
    assert set(during.json["unavailable"]) == {"redis", "broker"}
    assert during.json["switching"]["redis"].startswith("switching:"), during.json
    answer = deliver(2)
    assert answer.status_code == 503 and answer.headers["Retry-After"], answer.json

    cluster.wait_new_master(old)
    # The same app and clients: the next requests reach the new master; a 2xx once
    # the other replica follows it and confirms (a provider's retries until then).
    wait_for(lambda: client.get("/readyz").status_code == 200, timeout=20, message="/readyz")
    wait_for(lambda: deliver(2).status_code in (200, 202), timeout=30, message="a 2xx")
    assert cluster.master_port() != old  # `new`, or another replica after a second failover
    master = cluster.master(db=3)
    queued = master.llen("webhook_ingest") + master.llen("webhook_ingest.unmatched")
    assert queued == 2, "both acknowledged deliveries are queued on the new master, once"
    celery_app.close()


@pytest.mark.e2e
def test_every_process_reaches_the_master_through_the_sentinels(cluster):
    """gunicorn, the Celery worker and Flower as the Procfile starts them, on one
    redis+sentinel:// URL: a delivery is received, queued, applied; Flower reads
    the broker's queues through the sentinels too."""
    from tests.integration.test_end_to_end import Service, register
    from tests.integration.test_operability_processes import (
        flower_for,
        flower_ingest_tasks,
        flower_queue_lengths,
    )

    service = Service(cluster.url(5), {"WORKER_METRICS_PORT": "0"})
    try:
        service.start_web()
        service.start_worker()
        run = uuid.uuid4().hex[:8]
        job_id, external_id = f"job-{run}", f"pred-{run}"
        register(service, job_id, "replicate", external_id)
        with flower_for(service) as base:

            def applied() -> bool:
                # Flower switches the workers' events on within seconds; deliver until seen.
                body = body_of({"id": external_id, "status": "processing", "logs": ""})
                requests.post(
                    f"{service.url}/webhook/replicate/{job_id}",
                    data=body,
                    headers=signed_headers(REPLICATE_SECRET, body),
                    timeout=5,
                )
                state = cluster.master(db=5).hgetall(f"job_state:{job_id}")
                return state.get("status") == "processing" and bool(flower_ingest_tasks(base))

            wait_for(applied, timeout=60, interval=1, message=f"applied ({service.logs})")
            assert "webhook_ingest" in flower_queue_lengths(base)
    finally:
        service.stop()

"""The nginx recipe (deploy/nginx/webhook-ingest.conf, docs/operations.md "Reverse
proxy") in front of the real receiver: a real nginx started from the shipped file
with only its two ADAPT lines pointed at free ports, and gunicorn as the Procfile
starts it, configured as the recipe says (TRUSTED_PROXY_COUNT=1, nginx on the
default FORWARDED_ALLOW_IPS, the default MAX_BODY_BYTES and per-provider limits).

On loopback every address of 127.0.0.0/8 is this machine, so the test's client
connects from 127.0.0.2 while nginx reaches gunicorn from 127.0.0.1: the
receiver's allowlist (127.0.0.2 only) shows which address it took for the client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time

import pytest
import redis

from tests.edge import (
    RECIPE,
    Nginx,
    Slowloris,
    Web,
    deliver,
    delivery_body,
    get,
    new_job_id,
    register,
    request,
)
from tests.support import queued_in

pytestmark = pytest.mark.e2e

CLIENT = "127.0.0.2"  # the provider, as far as this test is concerned
STRANGER = "127.0.0.3"
MAX_BODY_BYTES = 1048576  # the receiver's default, and the recipe's client_max_body_size 1m
# RunPod's and fal's default MAX_BODY_BYTES_<PROVIDER>, and their locations' 20m
INLINE_OUTPUT_BYTES = 20 * 1024 * 1024
RUNPOD_SECRET = secrets.token_urlsafe(32)
HEADER_TIMEOUT = 5  # the recipe's client_header_timeout
SLACK = 3.0
QUEUE = "webhook_ingest"


@pytest.fixture(scope="module")
def edge(private_redis):
    web = Web(
        private_redis.url,
        TRUSTED_PROXY_COUNT="1",
        WEBHOOK_IP_ALLOWLIST_REPLICATE=f"{CLIENT}/32",
        MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        WEBHOOK_URL_SECRET_RUNPOD=RUNPOD_SECRET,
    ).start()
    nginx = Nginx(upstream_port=web.port)
    try:
        nginx.start()
        yield web, nginx, redis.Redis.from_url(private_redis.url)
    finally:
        nginx.stop()
        web.stop()


def test_a_signed_delivery_through_nginx_is_accepted_as_coming_from_the_client(edge):
    web, nginx, store = edge
    job_id = new_job_id()
    register(web.port, job_id)
    queued = queued_in(store)

    through_nginx = deliver(nginx.port, job_id, source=CLIENT, timeout=5)
    # A stranger naming the client in its own X-Forwarded-For: nginx replaces it.
    forged = deliver(
        nginx.port,
        job_id,
        extra_headers={"X-Forwarded-For": CLIENT},
        source=STRANGER,
        timeout=5,
    )
    # Straight to gunicorn, without nginx's header, the receiver sees nginx's address.
    direct = deliver(web.port, job_id, source="127.0.0.1", timeout=5)

    assert through_nginx[0] == 202, through_nginx
    assert json.loads(through_nginx[2]) == {"received": True}
    assert forged[0] == 403, forged
    assert direct[0] == 403, direct
    assert queued_in(store) == queued + 1


def test_operator_endpoints_are_not_served_through_nginx(edge):
    _, nginx, _ = edge
    for path in ("/metrics", "/jobs/job-1", "/dead-letters", "/readyz"):
        status, _, body = get("127.0.0.1", nginx.port, path, timeout=5)
        assert status == 404, path
        assert json.loads(body) == {"error": "not found"}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_max_body_bytes_gets_413_from_nginx_and_one_at_it_is_accepted(edge, chunked):
    web, nginx, store = edge
    job_id = new_job_id()
    queued = queued_in(store)
    logged = len(web.logged())

    at_limit = deliver(
        nginx.port, job_id, delivery_body(job_id, MAX_BODY_BYTES), source=CLIENT, timeout=10,
        chunked=chunked,
    )  # fmt: skip
    over = deliver(
        nginx.port, job_id, delivery_body(job_id, MAX_BODY_BYTES + 1), source=CLIENT, timeout=10,
        chunked=chunked,
    )  # fmt: skip

    assert at_limit[0] == 202, at_limit
    assert over[0] == 413, over
    assert json.loads(over[2]) == {"error": "body too large"}
    assert queued_in(store) == queued + 1
    assert "too_large" not in web.logged()[logged:], "the receiver never saw the large body"


def runpod_body(size: int) -> bytes:
    """A RunPod COMPLETED status object of exactly `size` bytes (a base64 output)."""
    document = {"id": "rp-edge", "status": "COMPLETED", "output": {"image": ""}}
    document["output"]["image"] = "A" * (size - len(json.dumps(document)))
    body = json.dumps(document).encode()
    assert len(body) == size
    return body


def runpod_path(job_id: str) -> str:
    """The job's webhook URL path, its token derived as the README documents it."""
    mac = hmac.new(RUNPOD_SECRET.encode(), job_id.encode(), hashlib.sha256).digest()
    return f"/webhook/runpod/{job_id}/{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_runpod_outputs_up_to_its_20_mib_pass_nginx_and_one_byte_more_gets_413(edge, chunked):
    web, nginx, store = edge
    job_id = new_job_id()
    queued = queued_in(store)
    logged = len(web.logged())
    send = {"source": CLIENT, "timeout": 30, "chunked": chunked}
    headers = {"Content-Type": "application/json"}

    at_limit = request(
        "127.0.0.1", nginx.port, "POST", runpod_path(job_id), runpod_body(INLINE_OUTPUT_BYTES),
        headers, **send,
    )  # fmt: skip
    over = request(
        "127.0.0.1", nginx.port, "POST", runpod_path(job_id),
        runpod_body(INLINE_OUTPUT_BYTES + 1), headers, **send,
    )  # fmt: skip

    assert at_limit[0] == 202, at_limit
    assert over[0] == 413, over
    assert json.loads(over[2]) == {"error": "body too large"}
    assert queued_in(store) == queued + 1
    assert "too_large" not in web.logged()[logged:], "the receiver never saw the large body"


def test_the_recipes_body_limits_are_the_receivers_defaults():
    """Each location's client_max_body_size is its provider's default limit (README):
    nginx must neither refuse what the receiver takes nor pass what it refuses."""
    from webhook_ingest.config import load_settings
    from webhook_ingest.providers import load_providers

    recipe = RECIPE.read_text()
    sizes = {"k": 1024, "m": 1024 * 1024}

    def limit_in(block: str) -> int:
        number, unit = re.search(r"client_max_body_size (\d+)([km])?;", block).groups()
        return int(number) * sizes.get(unit, 1)

    per_location = {
        name: limit_in(block)
        for name, block in re.findall(r"location /webhook/(\w+)/ \{([^}]*)\}", recipe)
    }
    server_wide = limit_in(recipe.split("location")[0])
    providers = load_providers(load_settings({}), {})

    assert server_wide == load_settings({}).max_body_bytes
    for name, provider in providers.items():
        if provider.supports_webhooks():
            assert per_location.get(name, server_wide) == provider.max_body_bytes, name
    assert set(per_location) == {"runpod", "fal"}


def test_a_slowloris_through_nginx_never_reaches_the_receiver(edge):
    web, nginx, _ = edge
    job_id = new_job_id()
    register(web.port, job_id)
    answers, upstream = [], []

    with Slowloris(nginx.port, idle=16, trickle=8, slow_body=8, limit=60) as attack:
        time.sleep(0.5)
        ends = time.monotonic() + HEADER_TIMEOUT + 2
        while time.monotonic() < ends:
            answers.append(deliver(nginx.port, job_id, source=CLIENT, timeout=1.0))
            upstream.append(web.established())
            time.sleep(0.1)
        failed_opens = attack.failed_opens
        closed = attack.closures("idle") + attack.closures("trickle")

    late = [a for a in answers if a[0] != 202 or a[1] >= 1.0]
    assert late == [], late
    assert len(answers) >= 10, answers
    assert failed_opens == 0
    # nginx held the 32 attackers; gunicorn saw only nginx's few pooled connections
    assert max(upstream) <= 4, upstream
    # nginx dropped the idle and trickling ones at client_header_timeout
    assert len(closed) >= 24, closed
    for one in closed:
        assert HEADER_TIMEOUT - 0.5 <= one.lifetime <= HEADER_TIMEOUT + SLACK, one

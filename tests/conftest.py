"""Shared fixtures: a real Redis (a dedicated database), a real in-process Celery
worker, the Flask app, and a real HTTP server standing in for provider APIs.

The environment is set before any product module is imported, because every
process of the service reads its configuration once, at start.
"""

from __future__ import annotations

import base64
import os
import uuid

import pytest
import redis


def _secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
# A database of its own: flushing state between tests must not touch kombu's bindings.
TEST_BROKER_URL = os.environ.get("TEST_BROKER_URL", TEST_REDIS_URL.rsplit("/", 1)[0] + "/13")
OPENAI_SECRET = _secret()
REPLICATE_SECRET = _secret()
REPLICATE_OLD_SECRET = _secret()
ADMIN_TOKEN = "test-admin-token-" + uuid.uuid4().hex

os.environ.update(
    REDIS_URL=TEST_REDIS_URL,
    CELERY_BROKER_URL=TEST_BROKER_URL,
    WEBHOOK_SECRET_OPENAI=OPENAI_SECRET,
    # Two secrets: Replicate is mid-rotation in the tests, both must verify.
    WEBHOOK_SECRET_REPLICATE=f"{REPLICATE_SECRET} {REPLICATE_OLD_SECRET}",
    ADMIN_TOKEN=ADMIN_TOKEN,
    OPENAI_API_KEY="sk-test-key",
    REPLICATE_API_TOKEN="r8_test_token",
    # Short enough that "parked after the unmatched window" is testable.
    UNMATCHED_RETRY_SECONDS="4",
    MAX_BODY_BYTES="65536",
    # Tests send bursts from one address, many of them refused on purpose; the
    # rate-limit tests set their own limits.
    RATE_LIMIT="1000000/second",
    UNVERIFIED_RATE_LIMIT="1000000/second",
    ADMIN_FAILURE_LIMIT="1000000/second",
)

from tests.support import FakeProviderAPI  # noqa: E402


@pytest.fixture(scope="session")
def fake_api():
    api = FakeProviderAPI().start()
    os.environ["OPENAI_BASE_URL"] = f"{api.url}/v1"
    os.environ["REPLICATE_BASE_URL"] = f"{api.url}/v1"
    os.environ["STABILITY_BASE_URL"] = api.url
    yield api
    api.stop()


@pytest.fixture
def api(fake_api):
    fake_api.reset()
    return fake_api


@pytest.fixture
def redis_client():
    client = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def services(redis_client, fake_api):
    from webhook_ingest.services import build_services

    return build_services()


@pytest.fixture
def services_with(redis_client, fake_api):
    """`services_with(**environ)`: Services on the test database built from the test
    environment plus `environ` (None unsets a variable), with connections of their
    own as another process would have; closed after the test."""
    from tests.support import environ_with
    from webhook_ingest.services import build_services

    built = []

    def build(**environ: object):
        services = build_services(environ=environ_with(**environ))
        built.append(services)
        return services

    yield build
    for services in built:
        services.redis.close()


@pytest.fixture(scope="module")
def private_redis():
    """A redis-server of this module's own: state store and broker of the apps
    `receiver_with` builds, so what they queue reaches no worker and a test may
    compare the whole database before and after."""
    from tests.support import PrivateRedis

    server = PrivateRedis().start()
    yield server
    server.cleanup()


@pytest.fixture
def own_redis():
    """A redis-server of this test's own (one it may fill, stop or break)."""
    from tests.support import PrivateRedis

    server = PrivateRedis().start()
    yield server
    server.cleanup()


@pytest.fixture
def receiver_with(request):
    """`receiver_with(**environ)` -> tests.support.Receiver: the receiver app built
    from the test environment plus `environ` (None unsets a variable) on the
    module's `private_redis` as state store and broker, emptied first; or on
    `redis_url` and `broker_url` (default: the same) if given, left as they are.
    Closed after the test."""
    from tests.support import Receiver

    built = []

    def build(redis_url: str | None = None, broker_url: str | None = None, **environ: object):
        own = redis_url is None
        if own:
            redis_url = request.getfixturevalue("private_redis").url
        receiver = Receiver.build(redis_url, broker_url or redis_url, **environ)
        built.append(receiver)
        if own:
            receiver.raw.flushall()
        return receiver

    yield build
    for receiver in built:
        receiver.close()


@pytest.fixture
def app(services):
    from webhook_ingest.web.app import create_app

    flask_app = create_app(services)
    flask_app.testing = True
    return flask_app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def celery_app():
    from workers.celery_app import create_celery_app

    return create_celery_app()


@pytest.fixture(scope="session")
def worker(celery_app, fake_api):
    """A real Celery worker in this process, consuming from the real Redis broker."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(celery_app, pool="solo", perform_ping_check=False, loglevel="WARNING") as w:
        yield w


@pytest.fixture
def job_id():
    return f"job-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def admin_headers():
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def quiet_broker():
    """A broker no worker consumes: deliveries accepted by tests that do not apply
    them must not reach the shared worker and write into later tests' Redis."""
    from tests.support import PrivateRedis, celery_for

    server = PrivateRedis().start()
    celery_app = celery_for(server.url)
    yield celery_app
    celery_app.close()
    server.cleanup()


def pytest_terminal_summary(terminalreporter):
    """The fault suite's counts (tests/faults/fault_harness.py), whatever the output capture."""
    from tests.faults.fault_harness import COUNTS

    if COUNTS:
        terminalreporter.section("fault suite counts")
        for line in COUNTS:
            terminalreporter.write_line(line)

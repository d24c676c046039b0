"""A stranger without a secret against the real receiver (issue 14, finding 5).

gunicorn as the Procfile starts it. Forged deliveries from the provider's own
address (127.0.0.1 here, as every client is behind a proxy with
TRUSTED_PROXY_COUNT=0) used to spend RATE_LIMIT first and push 18 of 20
authentic deliveries into 429; 2,000 wrong operator tokens went through in 3.3 s.
Now forgeries spend a per-client budget of their own, in each process's memory:
no Redis command, no 429 for a delivery that proves its signature, and one log
line per refusal only while the budget lasts.
"""

from __future__ import annotations

import base64
import http.client
import os
import threading
import time
from collections import Counter

import pytest
import redis

from tests.edge import Web, deliver, delivery_body, new_job_id, register, request
from tests.support import signed_headers

pytestmark = pytest.mark.e2e

FLOOD_THREADS = 4
UNVERIFIED_RATE = 10  # per second, per client, per process
ADMIN_FAILURES = 10  # per minute, per client, per process


@pytest.fixture
def web(private_redis):
    server = Web(
        private_redis.url,
        RATE_LIMIT="20/second",
        UNVERIFIED_RATE_LIMIT=f"{UNVERIFIED_RATE}/second",
        ADMIN_FAILURE_LIMIT=f"{ADMIN_FAILURES}/minute",
    ).start()
    yield server
    server.stop()


class Flood:
    """Forged deliveries (signed with a secret nobody configured) from threads on
    keep-alive connections, as fast as the receiver answers, until stopped."""

    def __init__(self, port: int, job_id: str) -> None:
        self.port = port
        self.job_id = job_id
        self.answers: Counter = Counter()
        self.retry_after: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(FLOOD_THREADS)]
        self._forger = "whsec_" + base64.b64encode(os.urandom(32)).decode()

    def __enter__(self) -> Flood:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self._stop.is_set():
            body = delivery_body(self.job_id)
            try:
                conn.request(
                    "POST",
                    f"/webhook/replicate/{self.job_id}",
                    body,
                    signed_headers(self._forger, body),
                )
                answer = conn.getresponse()
                answer.read()
                status, retry_after = answer.status, answer.getheader("Retry-After")
            except (OSError, http.client.HTTPException) as exc:
                status, retry_after = type(exc).__name__, None
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            with self._lock:
                self.answers[status] += 1
                if status == 429:
                    self.retry_after.add(retry_after)
        conn.close()


def commands_run(client: redis.Redis, before: dict) -> dict[str, int]:
    """Commands Redis ran since `before` (INFO commandstats), INFO itself left out."""
    now = {name: row["calls"] for name, row in client.info("commandstats").items()}
    ran = {name: calls - before.get(name, 0) for name, calls in now.items()}
    return {name: n for name, n in ran.items() if n and name != "cmdstat_info"}


def test_a_flood_of_forgeries_costs_no_redis_and_no_authentic_delivery_gets_429(web, private_redis):
    job_id = new_job_id()
    register(web.port, job_id)
    state = redis.Redis.from_url(private_redis.url)
    before = {name: row["calls"] for name, row in state.info("commandstats").items()}

    # the flood alone: nothing of it reaches Redis
    with Flood(web.port, job_id) as alone:
        time.sleep(3)
    ran_for_the_flood = commands_run(state, before)

    # the flood again, with the provider's own deliveries among it
    authentic = []
    with Flood(web.port, job_id) as flood:
        time.sleep(1)  # every process's budget spent
        for _ in range(20):
            authentic.append(deliver(web.port, job_id, timeout=5)[0])
            time.sleep(0.1)
    state.close()

    logged = web.logged()
    print(f"\nflood alone: {dict(alone.answers)}; with deliveries: {dict(flood.answers)}")
    assert ran_for_the_flood == {}, f"forgeries made Redis work: {ran_for_the_flood}"
    assert authentic == [202] * 20, authentic
    answers = alone.answers + flood.answers
    assert set(answers) == {401, 429}, answers
    # every process let its budget through as 401s, then answered 429
    assert answers[429] > answers[401], answers
    assert all(value and value.isdigit() and int(value) >= 1 for value in flood.retry_after)
    # one log line per 401, none per 429: the summaries are at most one a second
    assert logged.count('"outcome": "verification_failed"') == answers[401]
    assert logged.count("over UNVERIFIED_RATE_LIMIT") < answers[429] / 10


def test_wrong_operator_tokens_are_throttled_per_client(web):
    """2,000 guesses from one address: at most ADMIN_FAILURES per process get a
    401 (WEB_CONCURRENCY processes, each with its own budget), the rest 429 without
    the token being compared; another address's operator is served."""
    answers = Counter()
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=5)
    for guess in range(2000):
        conn.request("GET", f"/jobs/{new_job_id()}", headers={"Authorization": f"Bearer g{guess}"})
        answer = conn.getresponse()
        answer.read()
        answers[answer.status] += 1
    conn.close()
    from tests.conftest import ADMIN_TOKEN

    elsewhere, _, _ = request(
        "127.0.0.1",
        web.port,
        "GET",
        "/dead-letters",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        source="127.0.0.2",
        timeout=5,
    )

    print(f"\n2,000 wrong tokens: {dict(answers)}")
    processes = len(web.workers())
    assert set(answers) <= {401, 429}, answers
    assert answers[401] <= ADMIN_FAILURES * processes + processes, answers
    assert answers[429] >= 2000 - ADMIN_FAILURES * processes - processes
    assert elsewhere == 200

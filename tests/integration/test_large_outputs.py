"""Issue 15, item 3: outputs of real size.

RunPod (and fal) put outputs inline in the webhook: a base64 image of several MB
is a normal completion, and Stability's poll answer is the base64 artifact
itself. Such a delivery is accepted up to its provider's limit
(MAX_BODY_BYTES_<PROVIDER>; 20 MiB by default for RunPod and fal, MAX_BODY_BYTES
for the others), its result is stored whole in `job_state:{job_id}`, and the
pub/sub broadcast stays small: above BROADCAST_MAX_RESULT_BYTES (64 KiB of JSON
text) it carries `"result": null, "result_omitted": true, "result_size": <bytes>`
beside every usual field, and subscribers read the result from job_state.

RunPod's per-job URL token is derived here as the README documents it, never with
the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import secrets

import pytest

from tests.conftest import ADMIN_TOKEN, REPLICATE_SECRET
from tests.support import BROADCAST_FIELDS, Subscriber, client_for, signed_headers, wait_for
from webhook_ingest.state import keys
from webhook_ingest.state.job_update import COMPLETED, SOURCE_WEBHOOK, JobStateUpdate

SECRET = secrets.token_urlsafe(32)
MIB = 1024 * 1024
RUNPOD_DEFAULT_LIMIT = 20 * MIB  # README, configuration: MAX_BODY_BYTES_<PROVIDER>
THRESHOLD = 64 * 1024  # README: results over 64 KiB of JSON text are not broadcast
MARKER_FIELDS = {"result_omitted", "result_size"}


def token_of(job_id: str) -> str:
    """base64url, no padding, of HMAC-SHA256(WEBHOOK_URL_SECRET_RUNPOD, job id)."""
    mac = hmac.new(SECRET.encode(), job_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def runpod_env(**overrides: str | None) -> dict[str, str | None]:
    return {
        "WEBHOOK_URL_SECRET_RUNPOD": SECRET,
        "WEBHOOK_URL_TOKEN_RUNPOD": None,
        "WEBHOOK_BASE_URL": "https://hooks.example.com",
        **overrides,
    }


def image_of(size: int) -> str:
    """Base64 of random bytes, `size` characters long (a multiple of 4)."""
    return base64.b64encode(os.urandom(size // 4 * 3)).decode()


def runpod_completion(external_id: str, image_chars: int) -> tuple[bytes, dict]:
    """A COMPLETED status object whose output is a base64 image, as a RunPod worker
    returning images inline sends it."""
    output = {"images": [{"image": image_of(image_chars), "type": "base64"}], "seed": 7}
    document = {
        "id": external_id,
        "status": "COMPLETED",
        "delayTime": 812,
        "executionTime": 9120,
        "output": output,
    }
    return json.dumps(document).encode(), output


def padded_runpod_body(external_id: str, size: int) -> bytes:
    """A COMPLETED status object of exactly `size` bytes."""
    document = {"id": external_id, "status": "COMPLETED", "output": {"image": ""}}
    bare = len(json.dumps(document).encode())
    document["output"]["image"] = "A" * (size - bare)
    body = json.dumps(document).encode()
    assert len(body) == size
    return body


def post_runpod(client, job_id: str, body: bytes, *, chunked: bool = False):
    path = f"/webhook/runpod/{job_id}/{token_of(job_id)}"
    if not chunked:
        return client.post(path, data=body, headers={"Content-Type": "application/json"})
    return client.post(
        path,
        input_stream=io.BytesIO(body),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def state_of(redis_client, job_id: str) -> dict[str, str]:
    return redis_client.hgetall(keys.job_state(job_id))


def assert_marker(message: dict, job_id: str, stored: str) -> None:
    """The broadcast of a result too large to carry: every usual field, the result
    null, and the marker naming the stored text's size."""
    assert set(message) == BROADCAST_FIELDS | MARKER_FIELDS, sorted(message)
    assert message["job_id"] == job_id
    assert message["status"] == COMPLETED
    assert message["progress"] == 100
    assert message["result"] is None
    assert message["result_omitted"] is True
    assert message["result_size"] == len(stored.encode())
    assert len(json.dumps(message)) < 1024


# -- a 3 MB RunPod completion, end to end --------------------------------------------------


def test_a_3_mb_runpod_completion_is_stored_whole_and_broadcast_as_a_marker(
    services_with, worker, redis_client, job_id
):
    services = services_with(**runpod_env())
    services.jobs.register(job_id, "runpod", "rp-large-1")
    client = client_for(services, None)  # the broker the in-process worker consumes
    body, output = runpod_completion("rp-large-1", 4 * MIB)
    assert 3 * MIB < len(body) < 4.1 * MIB
    subscriber = Subscriber(redis_client, keys.progress_channel(job_id), keys.UPDATES_CHANNEL)
    try:
        answer = post_runpod(client, job_id, body)

        assert answer.status_code == 202, answer.get_json()
        state = wait_for(
            lambda: (
                state_of(redis_client, job_id).get("status") == COMPLETED
                and state_of(redis_client, job_id)
            ),
            timeout=30,
            message="the 3 MB completion to be applied",
        )
        assert json.loads(state["result"]) == output  # whole, every byte of the image
        assert state["progress"] == "100"
        assert state["source"] == SOURCE_WEBHOOK
        messages = wait_for(
            lambda: len(subscriber.drain()) >= 2 and subscriber.messages,
            message="the broadcast on both channels",
        )
    finally:
        subscriber.close()

    channels = sorted(channel for channel, _ in messages)
    assert channels == sorted([keys.progress_channel(job_id), keys.UPDATES_CHANNEL])
    for _, message in messages:
        assert_marker(message, job_id, state["result"])
        assert message["external_job_id"] == "rp-large-1"
        assert message["provider"] == "runpod"
        assert message["source"] == SOURCE_WEBHOOK
        assert message["updated_at"] == int(state["updated_at"])


# -- a Stability artifact by poll --------------------------------------------------------


def test_a_stability_base64_artifact_fetched_by_poll_is_stored_whole_and_broadcast_as_a_marker(
    services, worker, redis_client, api, job_id
):
    from workers.tasks import poll_job

    answer = {"image": image_of(3 * MIB), "finish_reason": "SUCCESS", "seed": 1234}
    api.respond("GET", "/v2beta/results/gen-large-1", (200, answer))
    services.jobs.register(job_id, "stability", "gen-large-1")
    subscriber = Subscriber(redis_client, keys.progress_channel(job_id))
    try:
        poll_job.delay("stability", job_id)

        state = wait_for(
            lambda: (
                state_of(redis_client, job_id).get("status") == COMPLETED
                and state_of(redis_client, job_id)
            ),
            timeout=30,
            message="the polled artifact to be applied",
        )
        messages = wait_for(
            lambda: subscriber.drain() and subscriber.messages, message="the broadcast"
        )
    finally:
        subscriber.close()

    assert json.loads(state["result"]) == answer
    assert len(state["result"]) > 3 * MIB
    assert state["source"] == "orphan_poll"
    [(_, message)] = messages
    assert_marker(message, job_id, state["result"])
    assert message["provider"] == "stability"
    assert message["source"] == "orphan_poll"


# -- the threshold ----------------------------------------------------------------------


def apply_result(services, job_id: str, result: object):
    update = JobStateUpdate(
        job_id=job_id,
        status=COMPLETED,
        provider="replicate",
        source=SOURCE_WEBHOOK,
        external_job_id="pred-threshold",
        result=result,
    )
    return services.state.apply(update, f"msg_{job_id}").broadcast


def test_a_result_of_exactly_the_threshold_is_broadcast_whole_and_one_byte_more_is_not(
    services, redis_client, job_id
):
    # JSON text of a string is the string and two quotes
    at_threshold = "x" * (THRESHOLD - 2)
    over = "y" * (THRESHOLD - 1)

    whole = apply_result(services, job_id, at_threshold)
    marked = apply_result(services, f"{job_id}-over", over)

    assert set(whole) == BROADCAST_FIELDS  # nothing added to a broadcast that carries it
    assert whole["result"] == at_threshold
    assert set(marked) == BROADCAST_FIELDS | MARKER_FIELDS
    assert marked["result"] is None
    assert marked["result_size"] == THRESHOLD + 1
    assert json.loads(state_of(redis_client, f"{job_id}-over")["result"]) == over


# -- per-provider limits ------------------------------------------------------------------


def test_runpod_takes_20_mib_by_default_while_replicate_keeps_max_body_bytes(receiver_with, job_id):
    receiver = receiver_with(**runpod_env())  # MAX_BODY_BYTES=65536 (tests/conftest.py)
    receiver.register(job_id, "runpod", "rp-limit")
    receiver.register(f"{job_id}-r", "replicate", "pred-limit")
    before = receiver.snapshot()

    over = post_runpod(
        receiver.client, job_id, padded_runpod_body("rp-limit", RUNPOD_DEFAULT_LIMIT + 1)
    )
    replicate = json.dumps(
        {"id": "pred-limit", "status": "processing", "logs": "x" * 65536}
    ).encode()
    too_large_for_replicate = receiver.client.post(
        f"/webhook/replicate/{job_id}-r",
        data=replicate,
        headers=signed_headers(REPLICATE_SECRET, replicate),
    )

    assert over.status_code == 413
    assert over.get_json() == {"error": "body too large"}
    assert too_large_for_replicate.status_code == 413
    assert receiver.snapshot() == before  # refused before anything was written

    at_limit = post_runpod(
        receiver.client, job_id, padded_runpod_body("rp-limit", RUNPOD_DEFAULT_LIMIT)
    )

    assert at_limit.status_code == 202, at_limit.get_json()
    assert receiver.queued() == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_max_body_bytes_runpod_is_enforced_while_reading(receiver_with, job_id, chunked):
    limit = 300_000
    receiver = receiver_with(**runpod_env(MAX_BODY_BYTES_RUNPOD=str(limit)))
    receiver.register(job_id, "runpod", "rp-set")
    before = receiver.snapshot()

    over = post_runpod(
        receiver.client, job_id, padded_runpod_body("rp-set", limit + 1), chunked=chunked
    )

    assert over.status_code == 413
    assert receiver.snapshot() == before

    at_limit = post_runpod(
        receiver.client, job_id, padded_runpod_body("rp-set", limit), chunked=chunked
    )

    assert at_limit.status_code == 202, at_limit.get_json()
    assert receiver.queued() == 1


def test_operator_requests_keep_max_body_bytes_whatever_a_provider_takes(receiver_with):
    receiver = receiver_with(**runpod_env())
    document = {"job_id": "job-big", "provider": "runpod", "external_job_id": "x" * 70_000}

    answer = receiver.client.post(
        "/jobs", json=document, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )

    assert answer.status_code == 413


class CountedBody(io.BytesIO):
    """A request body that counts the bytes the receiver takes from it."""

    taken = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.taken += len(data)
        return data

    def readinto(self, buffer) -> int:
        count = super().readinto(buffer)
        self.taken += count
        return count


def test_a_wrong_runpod_token_is_refused_before_the_body_is_read(receiver_with, job_id):
    """RunPod's URLs take 20 MiB, and its URL token covers nothing of the body: a
    stranger without the job's token gets 401 before a byte of the body is read."""
    receiver = receiver_with(**runpod_env())
    receiver.register(job_id, "runpod", "rp-stranger")
    body = CountedBody(padded_runpod_body("rp-stranger", RUNPOD_DEFAULT_LIMIT))

    answer = receiver.client.post(
        f"/webhook/runpod/{job_id}/{token_of(job_id + '-other')}",
        input_stream=body,
        headers={"Content-Type": "application/json", "Content-Length": str(RUNPOD_DEFAULT_LIMIT)},
    )

    assert answer.status_code == 401
    assert body.taken == 0
    assert receiver.queued() == 0

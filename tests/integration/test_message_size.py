"""Issue 14, finding 4: the broker message carries the delivery's body once, as UTF-8.

Measured before: a 1 MiB body of non-ASCII text made a 4 MiB queue message
(every character a six-byte \\uXXXX, in base64) and a 3 MiB journal record.
Now: base64 of UTF-8, 1.33x, and the journal record about the body's size.
"""

from __future__ import annotations

import json

from tests.conftest import REPLICATE_SECRET
from tests.support import signed_headers, wait_for
from webhook_ingest.state import keys

MIB = 1024 * 1024


def non_ascii_body(size: int, text: str) -> str:
    padding = "é" * ((size - 200) // 2)
    return json.dumps(
        {"id": "pred-utf8", "status": "failed", "error": text, "logs": padding}, ensure_ascii=False
    )


def test_a_one_mib_non_ascii_body_makes_a_message_of_about_four_thirds(receiver_with):
    from celeryconfig import QUEUE

    receiver = receiver_with(MAX_BODY_BYTES=str(MIB))  # no worker reads its queue
    receiver.register("job-utf8", "replicate", "pred-utf8")
    body = non_ascii_body(MIB, "échec 日本")
    size = len(body.encode())
    assert MIB - 300 < size <= MIB

    answer = receiver.client.post(
        "/webhook/replicate/job-utf8",
        data=body.encode(),
        headers=signed_headers(REPLICATE_SECRET, body),
    )

    assert answer.status_code == 202, answer.get_json()
    message = receiver.raw.lindex(QUEUE, 0)
    record = next(iter(receiver.raw.hvals(keys.JOURNAL_MESSAGES)))
    print(f"body {size} B: queue message {len(message)} B, journal record {len(record)} B")
    assert len(message) < 1.4 * size  # was 4.0x
    assert len(record) < 1.05 * size  # was 3.0x
    assert receiver.take_queued().body == body


def test_a_non_ascii_body_is_applied_by_the_worker_as_sent(
    client, services, worker, redis_client, job_id
):
    services.jobs.register(job_id, "replicate", "pred-utf8")
    body = non_ascii_body(60_000, "échec: 日本語のエラー")

    answer = client.post(
        f"/webhook/replicate/{job_id}",
        data=body.encode(),
        headers=signed_headers(REPLICATE_SECRET, body),
    )

    assert answer.status_code == 202
    state = wait_for(
        lambda: (
            redis_client.hgetall(keys.job_state(job_id)).get("status") == "failed"
            and redis_client.hgetall(keys.job_state(job_id))
        ),
        message="the delivery to be applied",
    )
    assert state["error_message"] == "échec: 日本語のエラー"

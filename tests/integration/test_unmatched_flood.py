"""Issue 14, finding 4: deliveries for unknown jobs must not crowd out real ones.

A flood of signed deliveries for jobs nobody registered, through the receiver and
the real worker, then one delivery for a registered job: it is applied within a
few seconds, not after the flood (measured 130 s in the finding): the receiver
puts deliveries for jobs with no mapping, and the worker their retries, on a
queue of their own that the worker reads only while the main one is empty.
"""

from __future__ import annotations

import time
import uuid

from tests.conftest import REPLICATE_SECRET
from tests.support import body_of, signed_headers, wait_for
from webhook_ingest.state import keys

FLOOD = 2000


def post(client, job_id, prediction):
    body = body_of(prediction)
    answer = client.post(
        f"/webhook/replicate/{job_id}", data=body, headers=signed_headers(REPLICATE_SECRET, body)
    )
    assert answer.status_code in (200, 202), answer.get_json()


def test_unmatched_flood_does_not_delay_a_matched_delivery(
    client, services, worker, redis_client, job_id
):
    for index in range(FLOOD):
        post(client, f"ghost-{uuid.uuid4().hex[:10]}", {"id": f"p-{index}", "status": "processing"})
    services.jobs.register(job_id, "replicate", "pred-real")

    sent = time.monotonic()
    post(client, job_id, {"id": "pred-real", "status": "succeeded", "output": "done"})
    wait_for(
        lambda: redis_client.hget(keys.job_state(job_id), "status") == "completed",
        timeout=120,
        interval=0.02,
        message="the matched delivery to be applied",
    )
    waited = time.monotonic() - sent
    print(f"matched delivery applied {waited:.2f} s after it was sent, behind {FLOOD} unmatched")
    # measured before the unmatched queue: 4.0 s behind 2,000 (1,474 first attempts
    # still queued before it); after: 0.02 s
    assert waited < 2, f"the matched delivery waited {waited:.1f} s behind the unmatched flood"
    # the flood still ends as dead letters (UNMATCHED_RETRY_SECONDS=4 in the tests),
    # none of it left behind for the next test's worker
    wait_for(
        lambda: redis_client.zcard(keys.DEAD_LETTERS) >= FLOOD,
        timeout=60,
        message="the unmatched flood to be parked",
    )

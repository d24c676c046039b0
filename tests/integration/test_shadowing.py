"""A captured delivery cannot shadow the real one (issue: edge hardening, finding 2).

Whoever captures a signed delivery can post it, unchanged, to another job's URL
first. The claim is per provider, per job of the URL and per delivery id, so that
copy is a claim of its own (it names another prediction than the job's and is
parked), and the real delivery to its own URL is received and applied.
Through the real receiver and a real worker.
"""

from __future__ import annotations

from tests.conftest import REPLICATE_SECRET
from tests.support import body_of, signed_headers, wait_for
from webhook_ingest.state import keys


def test_the_same_signed_delivery_posted_to_another_job_first_does_not_shadow_the_real_one(
    client, services, worker, redis_client, job_id
):
    real, other = job_id, f"{job_id}-other"
    services.jobs.register(real, "replicate", "pred-real")
    services.jobs.register(other, "replicate", "pred-other")
    body = body_of({"id": "pred-real", "status": "succeeded", "output": ["out.png"]})
    headers = signed_headers(REPLICATE_SECRET, body)  # captured on the way to `real`

    shadow = client.post(f"/webhook/replicate/{other}", data=body, headers=headers)
    genuine = client.post(f"/webhook/replicate/{real}", data=body, headers=headers)
    again = client.post(f"/webhook/replicate/{real}", data=body, headers=headers)

    assert shadow.status_code == 202
    assert genuine.status_code == 202, genuine.get_json()  # not a "duplicate"
    assert genuine.get_json() == {"received": True}
    assert again.get_json() == {"received": True, "duplicate": True}
    state = wait_for(
        lambda: (
            redis_client.hget(keys.job_state(real), "status") == "completed"
            and redis_client.hgetall(keys.job_state(real))
        ),
        message="the real job to be updated",
    )
    assert state["result"] == '["out.png"]'
    # the copy at the other job's URL named a prediction that is not that job's
    wait_for(lambda: services.dead_letters.count() == 1, message="the copy to be parked")
    [letter] = services.dead_letters.list()
    assert (letter["job_id"], letter["reason"]) == (other, "JobMismatch")
    assert not redis_client.exists(keys.job_state(other))

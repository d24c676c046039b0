"""A signed Replicate delivery goes through the receiver and a real worker into job_state."""

from tests.conftest import REPLICATE_SECRET
from tests.support import body_of, signed_headers, wait_for


def test_signed_replicate_webhook_becomes_job_state(client, services, worker, redis_client, job_id):
    services.jobs.register(job_id, "replicate", "pred-1")
    body = body_of({"id": "pred-1", "status": "succeeded", "output": ["https://x/1.png"]})

    response = client.post(
        f"/webhook/replicate/{job_id}", data=body, headers=signed_headers(REPLICATE_SECRET, body)
    )

    assert response.status_code == 202
    assert response.get_json() == {"received": True}

    def completed_state():
        state = redis_client.hgetall(f"job_state:{job_id}")
        return state if state.get("status") == "completed" else None

    state = wait_for(completed_state, message="job_state completed")
    assert state["progress"] == "100"
    assert state["result"] == '["https://x/1.png"]'
    assert state["source"] == "webhook"

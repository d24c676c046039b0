"""Raw retention (issue 5, "Operability"): a short debug window of every verified delivery.

RAW_RETENTION_SECONDS (0, off, by default) keeps each verified delivery as it
was received (provider, delivery id, job id from the URL, safe headers, body,
received_at) in Redis for that long. Keeping the copy never changes the answer
to the provider. Operators read them with `webhook-ingest raw-deliveries`.

Deliveries go to `quiet_broker`, which no worker consumes: only the receiver is
under test here.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from tests.conftest import REPLICATE_SECRET
from tests.support import body_of, client_for, environ_with, free_port, signed_headers
from webhook_ingest.clock import now_ms
from webhook_ingest.config import ConfigError, load_settings
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.operations.cli import main
from webhook_ingest.operations.raw_deliveries import RawDeliveries
from webhook_ingest.redis_client import connect
from webhook_ingest.state import keys

RETENTION = 600


def raw_keys(redis_client) -> list[str]:
    return redis_client.keys("webhook_ingest:raw_*")


def post(client, job_id: str, prediction: dict):
    body = body_of(prediction)
    headers = signed_headers(REPLICATE_SECRET, body)
    response = client.post(f"/webhook/replicate/{job_id}", data=body, headers=headers)
    return response, headers, body


@pytest.fixture
def retaining(services_with, monkeypatch):
    """Services (and the CLI's environment) with RAW_RETENTION_SECONDS on."""
    monkeypatch.setenv("RAW_RETENTION_SECONDS", str(RETENTION))
    return services_with()


def test_raw_retention_is_off_by_default_and_keeps_nothing(
    services, quiet_broker, redis_client, job_id
):
    assert load_settings({}).raw_retention_seconds == 0
    assert services.settings.raw_retention_seconds == 0
    client = client_for(services, quiet_broker)

    response, _, _ = post(client, job_id, {"id": "pred-off", "status": "starting"})

    assert response.status_code == 202
    assert raw_keys(redis_client) == []


def test_when_on_a_verified_delivery_is_kept_with_the_retention_as_ttl(
    retaining, quiet_broker, redis_client, job_id
):
    client = client_for(retaining, quiet_broker)
    before = now_ms()

    response, headers, body = post(client, job_id, {"id": "pred-kept", "status": "starting"})

    assert response.status_code == 202
    delivery_id = headers["webhook-id"]
    key = keys.raw_delivery(f"replicate:{delivery_id}")
    assert 0 < redis_client.ttl(key) <= RETENTION
    kept = json.loads(redis_client.get(key))
    assert kept["provider"] == "replicate"
    assert kept["delivery_id"] == delivery_id
    assert kept["job_id"] == job_id
    assert kept["body"] == body
    assert kept["received_at"] >= before
    assert kept["headers"]["webhook-id"] == delivery_id
    assert "webhook-signature" not in kept["headers"]
    assert headers["webhook-signature"] not in redis_client.get(key)
    assert redis_client.zscore(keys.RAW_DELIVERIES, f"replicate:{delivery_id}") is not None
    assert 0 < redis_client.ttl(keys.RAW_DELIVERIES) <= RETENTION


def test_rejected_and_duplicate_deliveries_are_not_kept_again(
    retaining, quiet_broker, redis_client, job_id
):
    client = client_for(retaining, quiet_broker)
    body = body_of({"id": "pred-dup", "status": "starting"})
    headers = signed_headers(REPLICATE_SECRET, body)
    forged = {**headers, "webhook-signature": "v1,bm90IGEgc2lnbmF0dXJl"}

    assert client.post(f"/webhook/replicate/{job_id}", data=body, headers=forged).status_code == 401
    assert raw_keys(redis_client) == []
    for _ in range(2):
        client.post(f"/webhook/replicate/{job_id}", data=body, headers=headers)

    assert redis_client.zcard(keys.RAW_DELIVERIES) == 1


def test_failing_to_keep_the_copy_does_not_change_the_answer(
    retaining, quiet_broker, redis_client, job_id
):
    unreachable = connect(f"redis://127.0.0.1:{free_port()}/0")
    broken = dataclasses.replace(
        retaining, raw_deliveries=RawDeliveries(unreachable, retention_seconds=RETENTION)
    )
    client = client_for(broken, quiet_broker)

    response, _, _ = post(client, job_id, {"id": "pred-broken", "status": "starting"})

    assert response.status_code == 202
    assert response.get_json() == {"received": True}


def test_the_index_forgets_deliveries_older_than_the_retention(retaining, redis_client):
    raw = retaining.raw_deliveries
    old = Delivery("replicate", "msg_old", "{}", received_at=now_ms() - (RETENTION + 60) * 1000)
    new = Delivery("replicate", "msg_new", "{}")

    raw.keep(old)
    raw.keep(new)

    assert redis_client.zrange(keys.RAW_DELIVERIES, 0, -1) == ["replicate:msg_new"]


def test_list_is_newest_first_filtered_by_provider_and_limited(retaining):
    raw = retaining.raw_deliveries
    start = now_ms()
    for index, provider in enumerate(["replicate", "openai", "replicate", "openai"]):
        raw.keep(Delivery(provider, f"msg_{index}", "{}", received_at=start + index))

    assert [d["delivery_id"] for d in raw.list()] == ["msg_3", "msg_2", "msg_1", "msg_0"]
    assert [d["delivery_id"] for d in raw.list("replicate")] == ["msg_2", "msg_0"]
    assert [d["delivery_id"] for d in raw.list(limit=1)] == ["msg_3"]
    assert raw.get("openai", "msg_1")["provider"] == "openai"
    assert raw.get("openai", "msg_0") is None


def test_cli_lists_and_shows_kept_deliveries(retaining, quiet_broker, job_id):
    client = client_for(retaining, quiet_broker)
    _, headers, body = post(client, job_id, {"id": "pred-cli", "status": "starting"})
    delivery_id = headers["webhook-id"]
    runner = CliRunner()

    listed = runner.invoke(main, ["raw-deliveries", "list", "--provider", "replicate"])
    shown = runner.invoke(main, ["raw-deliveries", "show", "replicate", delivery_id])
    unknown = runner.invoke(main, ["raw-deliveries", "show", "replicate", "msg_nothing"])

    assert listed.exit_code == 0, listed.output
    assert delivery_id in listed.output and job_id in listed.output
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["body"] == body
    assert unknown.exit_code != 0
    assert "no raw delivery" in unknown.output


def test_cli_says_when_raw_retention_is_off(services):
    result = CliRunner().invoke(main, ["raw-deliveries", "list"])

    assert result.exit_code == 0
    assert "RAW_RETENTION_SECONDS=0" in result.output


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_a_bad_raw_retention_names_the_variable(value):
    with pytest.raises(ConfigError, match="RAW_RETENTION_SECONDS"):
        load_settings({"RAW_RETENTION_SECONDS": value})


def test_a_raw_retention_is_read_from_the_environment():
    environ = environ_with(RAW_RETENTION_SECONDS="900")

    assert load_settings(environ).raw_retention_seconds == 900

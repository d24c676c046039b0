"""Dead letters (issue 5, "Operability"): parked, listed, shown, replayed and purged.

A delivery that cannot be applied after its retries is kept with its safe headers,
raw body, provider, reason, error and attempts. Operators list and show letters
from the `webhook-ingest` CLI and over HTTP (behind the ADMIN_TOKEN bearer), and
replay (through the normal path, idempotently) and purge them from the CLI.

Real Redis, a real in-process worker, deliveries signed as the providers sign
them, and the CLI run in-process against the same Redis.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
import redis
from click.testing import CliRunner

from tests.conftest import ADMIN_TOKEN, REPLICATE_SECRET
from tests.support import body_of, celery_for, free_port, signed_headers, wait_for
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.handoff.publish import INGEST_TASK, EnqueueFailed, enqueue
from webhook_ingest.handoff.single_script import broker_url
from webhook_ingest.operations.cli import main
from webhook_ingest.operations.dead_letters import WALK_CHUNK, UnknownDeadLetter
from webhook_ingest.state import keys

QUEUE = "webhook_ingest"  # celeryconfig.task_default_queue


def deliver(client, job_id: str, prediction: dict) -> str:
    body = body_of(prediction)
    headers = signed_headers(REPLICATE_SECRET, body)
    response = client.post(f"/webhook/replicate/{job_id}", data=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    return headers["webhook-id"]


def parked(services, delivery_id: str) -> dict:
    return wait_for(
        lambda: next(
            (d for d in services.dead_letters.list() if d["delivery_id"] == delivery_id), None
        ),
        timeout=20,
        message=f"delivery {delivery_id} to be parked",
    )


def state_of(redis_client, job_id: str) -> dict[str, str]:
    return redis_client.hgetall(keys.job_state(job_id))


def result_of(redis_client, job_id: str):
    result = state_of(redis_client, job_id).get("result")
    return None if result is None else json.loads(result)


def cli(*args: str, celery_app=None, input: str | None = None):
    """`webhook-ingest ...` in-process; it builds its services from the environment."""
    return CliRunner().invoke(main, list(args), obj=celery_app, input=input)


def a_letter(services, provider="replicate", reason="unmatched", job_id=None, body=None) -> str:
    """Park a delivery the way a worker does after its retries."""
    delivery = Delivery(
        provider=provider,
        delivery_id=f"msg_{uuid.uuid4().hex}",
        body=body or body_of({"id": "pred-x", "status": "succeeded", "output": "x"}),
        job_id=job_id,
        headers={"webhook-id": "msg_x", "content-type": "application/json"},
    )
    return services.dead_letters.park(delivery, reason, "no job registered", attempts=3)


def tqdm(percent: int) -> str:
    return f"{percent:3d}%|{'#' * (percent // 10):<10}| {percent}/100 [00:01<00:01]\n"


def unreachable_broker():
    return celery_for(f"redis://127.0.0.1:{free_port()}/0")


# -- the whole story, as an operator lives it ---------------------------------------------


def test_an_unmatched_delivery_is_parked_listed_shown_then_replayed_into_job_state(
    client, services, worker, redis_client, job_id, admin_headers
):
    prediction = {"id": "pred-late-job", "status": "succeeded", "output": ["cat.png"]}
    msg_id = deliver(client, job_id, prediction)

    # UNMATCHED_RETRY_SECONDS is 4 in the tests: retried inside that window, then parked.
    letter = parked(services, msg_id)
    assert letter["reason"] == "unmatched"
    assert letter["provider"] == "replicate"
    assert letter["job_id"] == job_id
    assert letter["attempts"] >= 2
    assert letter["error"]
    assert not state_of(redis_client, job_id)

    listed = cli("dead-letters", "list")
    assert listed.exit_code == 0, listed.output
    assert letter["id"] in listed.output and msg_id in listed.output

    over_http = client.get("/dead-letters", headers=admin_headers)
    assert over_http.status_code == 200
    [summary] = [d for d in over_http.get_json()["dead_letters"] if d["id"] == letter["id"]]
    assert summary["reason"] == "unmatched"
    assert summary["delivery_id"] == msg_id
    assert "message" not in summary  # bodies only when one letter is shown

    shown = cli("dead-letters", "show", letter["id"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["message"]["body"] == body_of(prediction)

    one = client.get(f"/dead-letters/{letter['id']}", headers=admin_headers)
    assert one.status_code == 200
    message = one.get_json()["message"]
    assert message["body"] == body_of(prediction)
    assert message["headers"]["webhook-id"] == msg_id
    assert "webhook-signature" not in message["headers"]
    assert REPLICATE_SECRET not in one.get_data(as_text=True)

    # The submitter finally writes the mapping; the operator replays.
    services.jobs.register(job_id, "replicate", "pred-late-job")
    replayed = cli("dead-letters", "replay", letter["id"])

    assert replayed.exit_code == 0, replayed.output
    assert letter["id"] in replayed.output
    assert "1 dead letter replayed" in replayed.output
    state = wait_for(
        lambda: (
            state_of(redis_client, job_id).get("status") == "completed"
            and state_of(redis_client, job_id)
        ),
        message="the replayed delivery to be applied",
    )
    assert state["progress"] == "100"
    assert json.loads(state["result"]) == ["cat.png"]
    assert state["provider"] == "replicate"
    assert state["external_job_id"] == "pred-late-job"
    assert state["source"] == "webhook"
    # finished by its journal record: nothing per job remembers it
    assert not redis_client.exists(keys.applied_deliveries(job_id))
    assert services.dead_letters.get(letter["id"]) is None
    assert client.get(f"/dead-letters/{letter['id']}", headers=admin_headers).status_code == 404


def test_replaying_a_delivery_that_was_already_applied_applies_nothing(
    client, services, celery_app, worker, redis_client, job_id
):
    """A journaled delivery cannot be both applied and parked (the second copy finds
    its record gone and is dropped unread: test_journal.py); a letter parked by a
    version before the journal can, and its version's applied set still says so."""
    services.jobs.register(job_id, "replicate", "pred-twice")
    first = {"id": "pred-twice", "status": "processing", "output": ["a"]}
    first_id = f"msg_{uuid.uuid4().hex}"
    # applied as versions before the journal sent it: no record, the applied set
    old = Delivery(provider="replicate", delivery_id=first_id, body=body_of(first), job_id=job_id)
    enqueue(celery_app, old)
    wait_for(lambda: result_of(redis_client, job_id) == ["a"])
    deliver(client, job_id, {"id": "pred-twice", "status": "processing", "output": ["a", "b"]})
    wait_for(lambda: result_of(redis_client, job_id) == ["a", "b"])

    # A copy of the first delivery is parked (say it was replayed and parked again).
    copy = Delivery(provider="replicate", delivery_id=first_id, body=body_of(first), job_id=job_id)
    letter_id = services.dead_letters.park(copy, "error", "parked again", attempts=1)
    replayed = cli("dead-letters", "replay", letter_id)
    assert replayed.exit_code == 0, replayed.output

    # The solo worker takes the queue in order: once this later delivery is applied,
    # the replay before it has been processed.
    deliver(client, job_id, {"id": "pred-twice", "status": "processing", "logs": tqdm(50)})
    wait_for(lambda: state_of(redis_client, job_id).get("progress") == "50")

    # Applied a second time, the first delivery would have put its result back.
    assert result_of(redis_client, job_id) == ["a", "b"]
    assert services.dead_letters.get(letter_id) is None


def test_bulk_replay_takes_only_the_letters_matching_its_filters(services, worker, redis_client):
    jobs = [f"job-{uuid.uuid4().hex[:12]}" for _ in range(3)]
    for index, job in enumerate(jobs):
        services.jobs.register(job, "replicate", f"pred-bulk-{index}")

    def body(index: int) -> str:
        return body_of({"id": f"pred-bulk-{index}", "status": "succeeded", "output": index})

    wanted = [
        a_letter(services, reason="unmatched", job_id=jobs[0], body=body(0)),
        a_letter(services, reason="unmatched", job_id=jobs[1], body=body(1)),
    ]
    other_reason = a_letter(services, reason="JobMismatch", job_id=jobs[2], body=body(2))
    other_provider = a_letter(services, provider="openai", reason="unmatched")

    result = cli(
        "dead-letters", "replay", "--all", "--provider", "replicate", "--reason", "unmatched"
    )

    assert result.exit_code == 0, result.output
    assert all(letter_id in result.output for letter_id in wanted)
    assert "2 dead letters replayed" in result.output
    for index in (0, 1):
        wait_for(
            lambda index=index: state_of(redis_client, jobs[index]).get("result") == str(index)
        )
    assert services.dead_letters.get(other_reason) is not None
    assert services.dead_letters.get(other_provider) is not None
    assert not state_of(redis_client, jobs[2])
    assert {letter["id"] for letter in services.dead_letters.list()} == {
        other_reason,
        other_provider,
    }


# -- the broker refuses ----------------------------------------------------------------------


def test_replay_while_the_broker_is_unreachable_keeps_the_letter(services):
    letter_id = a_letter(services)
    broker = unreachable_broker()
    try:
        with pytest.raises(EnqueueFailed):
            services.dead_letters.replay(letter_id, broker)
        assert services.dead_letters.get(letter_id) is not None

        single = cli("dead-letters", "replay", letter_id, celery_app=broker)
        bulk = cli("dead-letters", "replay", "--all", celery_app=broker)
    finally:
        broker.close()

    for result in (single, bulk):
        assert result.exit_code != 0
        assert "broker unavailable" in result.output
        assert "Traceback" not in result.output
    assert "0 dead letters replayed" in bulk.output
    assert [letter["id"] for letter in services.dead_letters.list()] == [letter_id]


def test_replay_sends_the_same_task_and_delivery_marked_as_a_replay(services, quiet_broker):
    letter_id = a_letter(services, job_id="job-on-the-wire")
    original = services.dead_letters.get(letter_id)["message"]
    queue = redis.Redis.from_url(broker_url(quiet_broker))
    queue.delete(QUEUE)
    before = int(time.time() * 1000)

    result = cli("dead-letters", "replay", letter_id, celery_app=quiet_broker)

    assert result.exit_code == 0, result.output
    [raw] = queue.lrange(QUEUE, 0, -1)
    envelope = json.loads(raw)
    assert envelope["headers"]["task"] == INGEST_TASK
    args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    sent = args[0]
    assert sent["replayed_at"] >= before
    marks = ("replayed_at", "journaled")
    assert {k: v for k, v in sent.items() if k not in marks} == {
        k: v for k, v in original.items() if k not in marks
    }
    # journaled before it was published: a worker that loses it does not lose the replay
    assert sent["journaled"] is True
    member = Delivery.from_message(sent).journal_member
    assert json.loads(services.redis.hget(keys.JOURNAL_MESSAGES, member)) == sent
    assert services.redis.zscore(keys.JOURNAL, member) is not None
    assert services.dead_letters.get(letter_id) is None
    queue.delete(QUEUE)
    queue.close()


# -- unknown letters ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["show", "replay", "purge"])
def test_an_unknown_letter_is_a_clear_cli_error(services, command):
    unknown = uuid.uuid4().hex

    result = cli("dead-letters", command, unknown)

    assert result.exit_code != 0
    assert f"no dead letter {unknown}" in result.output
    assert "Traceback" not in result.output


def test_replaying_an_unknown_letter_raises_and_sends_nothing(services, quiet_broker):
    queue = redis.Redis.from_url(broker_url(quiet_broker))
    queue.delete(QUEUE)

    with pytest.raises(UnknownDeadLetter):
        services.dead_letters.replay(uuid.uuid4().hex, quiet_broker)

    assert queue.llen(QUEUE) == 0
    queue.close()


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ((), "either one LETTER_ID or --all"),
        (("0123", "--all"), "either one LETTER_ID or --all"),
        (("0123", "--provider", "replicate"), "--provider only go with --all"),
    ],
)
def test_replay_and_purge_need_one_target(services, args, complaint):
    for command in ("replay", "purge"):
        result = cli("dead-letters", command, *args)

        assert result.exit_code == 2, result.output
        assert complaint in result.output


# -- purging -------------------------------------------------------------------------------------


def test_purge_removes_one_letter_and_its_index_entry(services, redis_client):
    letter_id = a_letter(services)
    kept = a_letter(services)

    result = cli("dead-letters", "purge", letter_id)

    assert result.exit_code == 0, result.output
    assert letter_id in result.output
    assert "1 dead letter purged" in result.output
    assert services.dead_letters.get(letter_id) is None
    assert not redis_client.exists(keys.dead_letter(letter_id))
    assert redis_client.zscore(keys.DEAD_LETTERS, letter_id) is None
    assert services.dead_letters.get(kept) is not None


def test_bulk_purge_takes_only_the_letters_matching_its_filters(services):
    target = a_letter(services, provider="replicate", reason="unmatched")
    other_reason = a_letter(services, provider="replicate", reason="PayloadError")
    other_provider = a_letter(services, provider="openai", reason="unmatched")

    result = cli(
        "dead-letters",
        "purge",
        "--all",
        "--provider",
        "replicate",
        "--reason",
        "unmatched",
        "--yes",
    )

    assert result.exit_code == 0, result.output
    assert target in result.output
    assert "1 dead letter purged" in result.output
    remaining = {letter["id"] for letter in services.dead_letters.list()}
    assert remaining == {other_reason, other_provider}


def test_bulk_purge_asks_first_and_a_no_purges_nothing(services):
    letters = {a_letter(services), a_letter(services, provider="openai")}

    refused = cli("dead-letters", "purge", "--all", input="n\n")

    assert refused.exit_code != 0
    assert "Purge 2 dead letters for good?" in refused.output, services.dead_letters.list()
    assert {letter["id"] for letter in services.dead_letters.list()} == letters

    confirmed = cli("dead-letters", "purge", "--all", input="y\n")

    assert confirmed.exit_code == 0, confirmed.output
    assert "2 dead letters purged" in confirmed.output
    assert services.dead_letters.list() == []
    assert services.dead_letters.count() == 0


def test_bulk_purge_older_than_spares_recent_letters(services, redis_client):
    old, recent = a_letter(services), a_letter(services)
    two_hours_ago = int(time.time() * 1000) - 2 * 3600 * 1000
    redis_client.hset(keys.dead_letter(old), "parked_at", two_hours_ago)
    redis_client.zadd(keys.DEAD_LETTERS, {old: two_hours_ago})

    result = cli("dead-letters", "purge", "--all", "--older-than", "3600", "--yes")

    assert result.exit_code == 0, result.output
    assert old in result.output and recent not in result.output
    assert [letter["id"] for letter in services.dead_letters.list()] == [recent]


# -- the index stays true to the records --------------------------------------------------------


def test_letters_whose_record_expired_leave_the_index(services, redis_client):
    expired, alive = a_letter(services), a_letter(services)
    redis_client.pexpire(keys.dead_letter(expired), 1)
    wait_for(lambda: not redis_client.exists(keys.dead_letter(expired)))

    assert [letter["id"] for letter in services.dead_letters.list()] == [alive]
    assert redis_client.zscore(keys.DEAD_LETTERS, expired) is None
    assert services.dead_letters.count() == 1


def test_every_letter_is_walked_once_in_order_across_pages_and_shared_milliseconds(
    services, redis_client
):
    letters = [a_letter(services) for _ in range(2 * WALK_CHUNK + 50)]
    # Three letters per millisecond, and one millisecond holding more than a page.
    parked_at = {
        letter_id: 1_700_000_000_000 + index // 3 for index, letter_id in enumerate(letters)
    }
    parked_at.update(dict.fromkeys(letters[: WALK_CHUNK + 10], 1_699_000_000_000))
    redis_client.zadd(keys.DEAD_LETTERS, parked_at)

    oldest_first = services.dead_letters.select()
    newest_first = [letter["id"] for letter in services.dead_letters.list(limit=10_000)]

    assert sorted(oldest_first) == sorted(letters)  # each exactly once
    assert sorted(newest_first) == sorted(letters)
    assert [parked_at[i] for i in oldest_first] == sorted(parked_at[i] for i in letters)
    assert [parked_at[i] for i in newest_first] == sorted(
        (parked_at[i] for i in letters), reverse=True
    )


# -- over HTTP -----------------------------------------------------------------------------------

BAD_AUTH = {
    "no-header": {},
    "wrong-token": {"Authorization": "Bearer not-the-admin-token-at-all"},
    "bare-token": {"Authorization": ADMIN_TOKEN},
}


@pytest.mark.parametrize("headers", BAD_AUTH.values(), ids=BAD_AUTH.keys())
def test_dead_letters_over_http_need_the_admin_token(client, services, headers):
    letter_id = a_letter(services)

    for path in ("/dead-letters", f"/dead-letters/{letter_id}"):
        response = client.get(path, headers=headers)

        assert response.status_code == 401, path
        assert response.is_json and response.get_json()["error"]
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert letter_id not in response.get_data(as_text=True)


def test_dead_letters_over_http_answer_with_the_admin_token(client, services, admin_headers):
    letter_id = a_letter(services)

    assert client.get("/dead-letters", headers=admin_headers).status_code == 200
    assert client.get(f"/dead-letters/{letter_id}", headers=admin_headers).status_code == 200


def test_http_list_is_newest_first_filtered_and_limited(client, services, admin_headers):
    oldest = a_letter(services, reason="unmatched")
    middle = a_letter(services, provider="openai", reason="unmatched")
    newest = a_letter(services, reason="JobMismatch")
    for score, letter_id in enumerate((oldest, middle, newest)):  # distinct, ordered times
        services.redis.zadd(keys.DEAD_LETTERS, {letter_id: 1_700_000_000_000 + score})

    def ids(query: str) -> list[str]:
        response = client.get(f"/dead-letters{query}", headers=admin_headers)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["count"] == len(body["dead_letters"])
        return [letter["id"] for letter in body["dead_letters"]]

    assert ids("") == [newest, middle, oldest]
    assert ids("?limit=2") == [newest, middle]
    assert ids("?provider=replicate") == [newest, oldest]
    assert ids("?reason=unmatched") == [middle, oldest]
    assert ids("?provider=replicate&reason=unmatched&limit=500") == [oldest]
    assert ids("?provider=fal") == []


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("?limit=0", "limit"),
        ("?limit=501", "limit"),
        ("?limit=abc", "limit"),
        ("?limit=", "limit"),
        ("?provider=nosuch", "provider"),
        ("?reason=" + "r" * 65, "reason"),
        ("?provder=replicate", "provder"),
    ],
)
def test_a_bad_query_parameter_is_a_400_naming_it(
    client, services, admin_headers, query, parameter
):
    response = client.get(f"/dead-letters{query}", headers=admin_headers)

    assert response.status_code == 400
    assert response.is_json
    body = response.get_json()
    assert body["parameter"] == parameter
    assert parameter in body["error"]


@pytest.mark.parametrize("letter_id", [uuid.uuid4().hex, "not-a-letter-id", "x" * 300])
def test_an_unknown_letter_over_http_is_a_404(client, services, admin_headers, letter_id):
    response = client.get(f"/dead-letters/{letter_id}", headers=admin_headers)

    assert response.status_code == 404
    assert response.is_json and response.get_json()["error"]

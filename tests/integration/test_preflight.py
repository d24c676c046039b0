"""Issue 17, items 1 and 6: `webhook-ingest check-config` is a real preflight, the
processes refuse what it refuses, and the operator surfaces say what they mean.

Every check-config case runs the installed command in a process of its own, with
the test environment (tests/conftest.py) plus the case's variables: exit code and
message are what an operator sees. "Down" is a port nothing listens on.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import OPENAI_SECRET, TEST_BROKER_URL, TEST_REDIS_URL
from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RABBITMQ = os.environ.get("TEST_RABBITMQ_HOST", "127.0.0.1:5672")


def run(*command: str, timeout: float = 60, **environ: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **environ}
    for name in [name for name, value in environ.items() if value is None]:
        env.pop(name)
    return subprocess.run(
        list(command), env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def check_config(**environ: str) -> subprocess.CompletedProcess:
    return run(str(BIN / "webhook-ingest"), "check-config", **environ)


def lines(text: str, start: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(start)]


def down_url(scheme: str = "redis", path: str = "/0") -> str:
    return f"{scheme}://127.0.0.1:{free_port()}{path}"


# -- connections ---------------------------------------------------------------------


def test_a_good_configuration_reaches_redis_and_the_broker_and_exits_0():
    done = check_config()

    assert done.returncode == 0, done.stderr
    assert f"redis: {TEST_REDIS_URL} ok" in done.stdout.splitlines()
    assert f"broker: {TEST_BROKER_URL} ok" in done.stdout.splitlines()
    assert done.stdout.splitlines()[-1] == "configuration ok"


def test_redis_down_is_one_error_line_naming_redis_and_exit_1():
    url = down_url()
    done = check_config(REDIS_URL=url)

    assert done.returncode == 1
    host_port = url.removeprefix("redis://").removesuffix("/0")
    assert lines(done.stderr, "ERROR") == [
        f"ERROR redis: {url} unreachable (ConnectionError: Error 111 connecting to "
        f"{host_port}. Connection refused.)"
    ]
    assert f"broker: {TEST_BROKER_URL} ok" in done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("scheme,path", [("redis", "/5"), ("amqp", "//")])
def test_a_broker_down_is_one_error_line_naming_the_broker(scheme, path):
    url = down_url(scheme, path)
    started = time.monotonic()
    done = check_config(CELERY_BROKER_URL=url)

    assert done.returncode == 1
    (error,) = lines(done.stderr, "ERROR")
    assert error.startswith(f"ERROR broker: {url} unreachable (OperationalError: ")
    assert f"redis: {TEST_REDIS_URL} ok" in done.stdout
    assert time.monotonic() - started < 20


def test_a_rabbitmq_broker_that_answers_is_ok_and_its_password_never_shown():
    done = check_config(CELERY_BROKER_URL=f"amqp://guest:guest@{RABBITMQ}//")

    assert done.returncode == 0, done.stderr
    assert f"broker: amqp://guest:***@{RABBITMQ}// ok" in done.stdout.splitlines()


# -- values the processes would refuse ------------------------------------------------


@pytest.mark.parametrize(
    "variable,value,complaint",
    [
        ("LOG_LEVEL", "verbose", "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("LOG_FORMAT", "yaml", "must be one of json, text"),
        ("FLOWER_BASIC_AUTH", "nocolon", "expected user:password"),
    ],
)
def test_a_value_the_processes_cannot_use_is_an_error_naming_the_variable(
    variable, value, complaint
):
    done = check_config(**{variable: value})

    assert done.returncode == 1
    (error,) = lines(done.stderr, "ERROR")
    assert error.startswith(f"ERROR {variable}: {complaint}")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["gunicorn", "-c", "gunicorn.conf.py", "webhook_ingest.wsgi:app"],
        ["python", "-m", "workers.run", "worker", "--pool", "solo"],
        ["celery", "-A", "workers", "beat"],
        ["python", "-m", "workers.flower"],
    ],
    ids=["web", "worker", "beat", "flower"],
)
@pytest.mark.parametrize(
    "variable,value", [("LOG_LEVEL", "verbose"), ("FLOWER_BASIC_AUTH", "nocolon")]
)
def test_every_process_refuses_the_same_values_at_start_in_one_line(command, variable, value):
    executable = sys.executable if command[0] == "python" else str(BIN / command[0])
    done = run(executable, *command[1:], timeout=30, PORT=str(free_port()), **{variable: value})

    assert done.returncode != 0
    assert (
        done.stderr.strip().splitlines()[-1].startswith(f"invalid configuration: {variable}: ")
    ), done.stderr
    assert "Traceback" not in done.stderr


# -- names nothing reads --------------------------------------------------------------


def test_unknown_webhook_and_provider_names_are_warned_with_the_nearest_known_one():
    done = check_config(
        WEBHOOK_SECRET_ACME="whsec_x", WEBHOOK_SECRET_REPLICAT="whsec_y", OPENAI_API_KY="sk"
    )

    assert done.returncode == 0, done.stderr
    warnings = lines(done.stdout, "WARNING")
    assert (
        "WARNING WEBHOOK_SECRET_REPLICAT is not a variable webhook-ingest reads "
        "(no provider replicat); did you mean WEBHOOK_SECRET_REPLICATE?"
    ) in warnings
    assert any(
        w.startswith("WARNING WEBHOOK_SECRET_ACME is not a variable webhook-ingest reads")
        and "(no provider acme)" in w
        for w in warnings
    ), warnings
    assert (
        "WARNING OPENAI_API_KY is not a variable webhook-ingest reads; did you mean OPENAI_API_KEY?"
    ) in warnings


# -- what each provider can do --------------------------------------------------------


def test_openai_enabled_without_its_key_says_fetch_poll_and_submit_do_not_work():
    done = check_config(OPENAI_API_KEY="")

    assert done.returncode == 0, done.stderr
    assert "provider openai: enabled (standard-webhooks)" in done.stdout
    assert (
        "  openai: receive yes (standard-webhooks); fetch no, set OPENAI_API_KEY; "
        "poll no, set OPENAI_API_KEY; submit no, set OPENAI_API_KEY"
    ) in done.stdout.splitlines()
    assert lines(done.stdout, "WARNING provider openai: no OPENAI_API_KEY")


def test_each_provider_says_what_receives_fetches_polls_and_submits():
    done = check_config(STABILITY_API_KEY="sk-stab", RUNPOD_API_KEY="")
    shown = done.stdout.splitlines()

    assert "  openai: receive yes (standard-webhooks); fetch yes; poll yes; submit yes" in shown
    assert "  replicate: receive yes (standard-webhooks); poll yes; submit yes" in shown
    assert "  stability: receive no (sends no webhooks); poll yes; submit yes" in shown
    assert (
        "  runpod: receive no, set WEBHOOK_URL_SECRET_RUNPOD; poll no, set RUNPOD_API_KEY; "
        "submit no, set RUNPOD_API_KEY"
    ) in shown


# -- secrets from files ---------------------------------------------------------------


def test_a_secret_may_come_from_a_file_named_by_its_FILE_variable(tmp_path):
    secret = tmp_path / "openai-secret"
    secret.write_text(OPENAI_SECRET + "\n")  # as `echo` and most secret stores write it
    key = tmp_path / "openai-key"
    key.write_text("sk-from-a-file\n")

    done = check_config(
        WEBHOOK_SECRET_OPENAI=None,
        WEBHOOK_SECRET_OPENAI_FILE=str(secret),
        OPENAI_API_KEY=None,
        OPENAI_API_KEY_FILE=str(key),
    )

    assert done.returncode == 0, done.stderr
    assert "provider openai: enabled (standard-webhooks)" in done.stdout
    assert "openai: receive yes (standard-webhooks); fetch yes" in done.stdout
    assert "WARNING" not in done.stdout


def test_a_secret_set_both_ways_or_in_a_missing_file_is_an_error_naming_it(tmp_path):
    token = tmp_path / "admin-token"
    token.write_text("9f2c61ad0be4c3a7e1d85b64f0a97c2e5d31b8a6")

    both = check_config(ADMIN_TOKEN_FILE=str(token))  # ADMIN_TOKEN is set in the tests
    missing = check_config(ADMIN_TOKEN=None, ADMIN_TOKEN_FILE=str(tmp_path / "nowhere"))

    assert both.returncode == 1
    assert lines(both.stderr, "ERROR") == [
        "ERROR ADMIN_TOKEN_FILE: ADMIN_TOKEN is set too; set one of them"
    ]
    assert missing.returncode == 1
    assert lines(missing.stderr, "ERROR") == [
        f"ERROR ADMIN_TOKEN_FILE: cannot read {tmp_path / 'nowhere'}: No such file or directory"
    ]


def test_a_weak_admin_token_read_from_a_file_is_refused_like_one_set_directly(tmp_path):
    token = tmp_path / "admin-token"
    token.write_text("change-me-change-me\n")

    done = check_config(ADMIN_TOKEN=None, ADMIN_TOKEN_FILE=str(token))

    assert done.returncode == 1
    assert lines(done.stderr, "ERROR ADMIN_TOKEN:")


# -- the other commands ---------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["dead-letters", "list"], ["jobs", "show", "job-1"], ["raw-deliveries", "list"]]
)
def test_other_commands_answer_a_down_redis_in_one_line(command):
    url = down_url()
    done = run(str(BIN / "webhook-ingest"), *command, REDIS_URL=url)

    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(f"Error: Redis unavailable at {url}: ")
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2  # raw-deliveries may say it is off


def test_dead_letters_list_says_when_there_are_none(redis_client):
    done = run(str(BIN / "webhook-ingest"), "dead-letters", "list")
    filtered = run(str(BIN / "webhook-ingest"), "dead-letters", "list", "--reason", "unmatched")

    assert done.returncode == 0, done.stderr
    assert done.stdout == "no dead letters\n"
    assert filtered.stdout == "no dead letters (reason=unmatched)\n"


# -- the receiver ---------------------------------------------------------------------


def test_gunicorn_says_the_configuration_warnings_once_not_once_per_worker(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "BIND_ADDRESS": "127.0.0.1",
        "WEB_CONCURRENCY": "3",
        "OPENAI_API_KEY": "",  # one configuration warning besides the disabled providers
    }
    log = tmp_path / "web.log"
    with log.open("w") as stderr:
        server = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "webhook_ingest.wsgi:app"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for(
            lambda: log.read_text().count("Booting worker") == 3 and _answers(port),
            timeout=60,
            message="gunicorn's three workers",
        )
        time.sleep(2)  # the last worker to boot finishes building its app
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = log.read_text()

    assert text.count("providers without verification configured") == 1, text
    assert text.count("no OPENAI_API_KEY") == 1, text


def _answers(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=3).ok
    except requests.RequestException:
        return False


def test_limit_errors_say_the_allowed_range(client, admin_headers):
    for limit in ("0", "501", "many"):
        response = client.get(f"/dead-letters?limit={limit}", headers=admin_headers)

        assert response.status_code == 400
        assert "between 1 and 500" in response.get_json()["error"]
        assert response.get_json()["parameter"] == "limit"


def test_an_unknown_reason_filter_is_400_naming_the_known_ones(client, admin_headers):
    response = client.get("/dead-letters?reason=unmatchd", headers=admin_headers)
    known = client.get("/dead-letters?reason=provider_auth", headers=admin_headers)

    assert response.status_code == 400
    assert response.is_json
    assert response.get_json()["parameter"] == "reason"
    assert "unknown reason; one of" in response.get_json()["error"]
    assert "unmatched" in response.get_json()["error"]
    assert known.status_code == 200


def test_a_wrong_and_a_missing_admin_token_are_told_apart_in_the_log_only(client, caplog):
    with caplog.at_level(logging.INFO, logger="webhook_ingest.web.admin_auth"):
        missing = client.get("/dead-letters")
        wrong = client.get("/dead-letters", headers={"Authorization": "Bearer nope-nope-nope"})

    assert missing.get_json() == wrong.get_json()
    assert missing.status_code == wrong.status_code == 401
    said = [(record.getMessage(), record.reason) for record in caplog.records]
    assert said == [
        ("operator request refused: no bearer token sent", "missing_token"),
        ("operator request refused: wrong bearer token", "wrong_token"),
    ]


def test_flower_reads_its_basic_auth_from_a_file_before_deciding_to_refuse(tmp_path):
    missing = run(
        sys.executable,
        "-m",
        "workers.flower",
        timeout=30,
        FLOWER_ADDRESS="0.0.0.0",  # noqa: S104 - refused before anything listens
        FLOWER_BASIC_AUTH=None,
        FLOWER_BASIC_AUTH_FILE=str(tmp_path / "nowhere"),
    )

    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f"invalid configuration: FLOWER_BASIC_AUTH_FILE: cannot read {tmp_path / 'nowhere'}: "
        "No such file or directory"
    )

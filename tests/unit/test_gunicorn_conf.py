"""gunicorn.conf.py reads the web server's settings from the environment and refuses
bad ones at start, naming the variable (README, Configuration)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[2] / "gunicorn.conf.py"
TUNING = (
    "WEB_THREADS",
    "WEB_WORKER_CLASS",
    "WEB_WORKER_CONNECTIONS",
    "WEB_HEADER_TIMEOUT_SECONDS",
    "WEB_BODY_TIMEOUT_SECONDS",
)


def settings(monkeypatch, **environ: str) -> dict:
    for name in TUNING:
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(CONF))


def test_the_default_is_gevent_with_a_5s_header_and_10s_body_deadline(monkeypatch):
    conf = settings(monkeypatch)

    assert conf["worker_class"] == "gevent"
    assert conf["keepalive"] == 5  # gevent's worker bounds each header read by it
    assert conf["_body_timeout"] == 10
    assert conf["worker_connections"] == 1000


def test_the_deadlines_and_connections_come_from_the_environment(monkeypatch):
    conf = settings(
        monkeypatch,
        WEB_HEADER_TIMEOUT_SECONDS="3",
        WEB_BODY_TIMEOUT_SECONDS="30",
        WEB_WORKER_CONNECTIONS="200",
    )

    assert (conf["keepalive"], conf["_body_timeout"], conf["worker_connections"]) == (3, 30, 200)


def test_web_threads_above_1_still_chooses_gthread(monkeypatch):
    conf = settings(monkeypatch, WEB_THREADS="4")

    assert (conf["worker_class"], conf["threads"]) == ("gthread", 4)


@pytest.mark.parametrize("worker_class", ["sync", "gthread", "gevent"])
def test_web_worker_class_is_taken_as_given(monkeypatch, worker_class):
    assert settings(monkeypatch, WEB_WORKER_CLASS=worker_class)["worker_class"] == worker_class


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"WEB_WORKER_CLASS": "eventlet"}, "WEB_WORKER_CLASS"),
        ({"WEB_THREADS": "4", "WEB_WORKER_CLASS": "gevent"}, "WEB_THREADS"),
        ({"WEB_HEADER_TIMEOUT_SECONDS": "0"}, "WEB_HEADER_TIMEOUT_SECONDS"),
        ({"WEB_HEADER_TIMEOUT_SECONDS": "61"}, "WEB_HEADER_TIMEOUT_SECONDS"),
        ({"WEB_BODY_TIMEOUT_SECONDS": "soon"}, "WEB_BODY_TIMEOUT_SECONDS"),
        ({"WEB_BODY_TIMEOUT_SECONDS": "301"}, "WEB_BODY_TIMEOUT_SECONDS"),
        ({"WEB_WORKER_CONNECTIONS": "0"}, "WEB_WORKER_CONNECTIONS"),
    ],
)
def test_a_bad_value_stops_the_start_naming_the_variable(monkeypatch, environ, named):
    with pytest.raises(SystemExit) as stopped:
        settings(monkeypatch, **environ)

    assert named in str(stopped.value)

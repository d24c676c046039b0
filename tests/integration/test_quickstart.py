"""The README's quickstart, run as written in a fresh clone, and `make run`'s
refusal to write into a Redis it did not start.

The clone reuses this checkout's virtualenv (a symlink: no pip install), and
only the ports and the Redis that `.env.example` names are changed, to free
ones, so the test runs beside other checkouts and the system Redis.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
import requests

from tests.conftest import TEST_REDIS_URL
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"


def quickstart_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def user_env() -> dict[str, str]:
    """What a user's shell has: no virtualenv, no test settings."""
    keep = ("HOME", "LANG", "LC_ALL", "USER", "TMPDIR")
    path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if not p.startswith(str(VENV))
    )
    return {"PATH": path, **{k: os.environ[k] for k in keep if k in os.environ}}


def set_line(text: str, name: str, value: str) -> str:
    text, count = re.subn(rf"(?m)^{name}=.*$", f"{name}={value}", text)
    assert count == 1, f".env.example has no single {name}= line"
    return text


@pytest.fixture
def clone(tmp_path):
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    (repo / ".venv").symlink_to(VENV)
    # The install stamp must stay newer than the clone's metadata: no reinstall.
    stamp = (VENV / ".installed").stat().st_mtime
    for name in ("setup.cfg", "pyproject.toml"):
        os.utime(repo / name, (stamp - 60, stamp - 60))
    return repo


def test_readme_quickstart_runs_verbatim_in_a_fresh_clone(clone):
    first, second = quickstart_blocks()[:2]
    assert first.strip().splitlines()[-1] == "make run"

    port, redis_port = free_port(), free_port()
    example = (clone / ".env.example").read_text()
    example = set_line(example, "PORT", str(port))
    example = set_line(example, "FLOWER_PORT", str(free_port()))
    example = set_line(example, "WORKER_METRICS_PORT", str(free_port()))
    example = set_line(example, "REDIS_URL", f"redis://127.0.0.1:{redis_port}/0")
    (clone / ".env.example").write_text(example)

    log = (clone.parent / "make-run.log").open("w")
    run = subprocess.Popen(
        ["bash", "-c", first],
        cwd=clone,
        env=user_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    state = redis.Redis(port=redis_port, decode_responses=True)
    try:
        wait_until_ready(run, port, clone.parent / "make-run.log")
        # make run started the Redis itself, in the clone.
        assert (clone / ".run" / f"redis-{redis_port}.pid").exists()

        done = subprocess.run(
            ["bash", "-c", second],
            cwd=clone,
            env=user_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert '"registered":true' in done.stdout.replace(" ", ""), done.stdout + done.stderr
        assert '{"received":true}' in done.stdout, done.stdout + done.stderr

        deadline = time.monotonic() + 20
        while state.hget("job_state:job-1", "status") != "completed":
            assert time.monotonic() < deadline, tail(clone.parent / "make-run.log")
            time.sleep(0.2)
        assert state.hget("job_state:job-1", "progress") == "100"
    finally:
        stop(run)
        try:
            state.shutdown(nosave=True)
        except redis.ConnectionError:
            pass


def test_make_run_refuses_a_redis_it_did_not_start():
    """The shared test server answers at TEST_REDIS_URL and this checkout did not
    start it: one line naming both ways out, and nothing started."""
    env = {**user_env(), "REDIS_URL": TEST_REDIS_URL}
    env.pop("ALLOW_EXISTING_REDIS", None)
    run = subprocess.Popen(
        ["make", "-s", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = run.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        stop(run)
        pytest.fail("make run started against a Redis it did not start")
    assert run.returncode != 0
    refusal = [line for line in err.splitlines() if "did not start" in line]
    assert len(refusal) == 1, err
    assert "REDIS_URL=" in refusal[0] and "ALLOW_EXISTING_REDIS=1" in refusal[0]


def test_allow_existing_redis_lets_make_run_use_it():
    env = {**user_env(), "REDIS_URL": TEST_REDIS_URL, "ALLOW_EXISTING_REDIS": "1"}
    done = subprocess.run(
        [str(ROOT / "scripts" / "ensure-redis.sh"), "--own"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "Redis answers" in done.stdout


def test_make_run_with_no_settings_uses_a_redis_of_its_own(clone):
    """No .env, no REDIS_URL: `make run` must not write into the system Redis on
    6379 (it did: db 0 on a shared machine); it starts its own on 6380."""
    own = redis.Redis(port=6380, socket_connect_timeout=1)
    try:
        own.ping()
        pytest.skip("something already answers on 6380: make run would rightly refuse it")
    except redis.ConnectionError:
        pass
    port = free_port()
    env = {
        **user_env(),
        "PORT": str(port),
        "FLOWER_PORT": str(free_port()),
        "WORKER_METRICS_PORT": str(free_port()),
    }
    log = (clone.parent / "make-run-defaults.log").open("w")
    run = subprocess.Popen(
        ["make", "run"],
        cwd=clone,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_ready(run, port, clone.parent / "make-run-defaults.log")
        assert (clone / ".run" / "redis-6380.pid").exists()
        assert own.ping()
    finally:
        stop(run)
        try:
            own.shutdown(nosave=True)
        except redis.ConnectionError:
            pass


def wait_until_ready(run: subprocess.Popen, port: int, log: Path, seconds: float = 40) -> None:
    """Until `make run`'s receiver answers /readyz; fails with the log's tail if
    make run stops or the time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        assert run.poll() is None, "make run stopped:\n" + tail(log)
        try:
            if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, tail(log)
        time.sleep(0.3)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


assert shutil.which("git"), "the quickstart test clones the repository with git"

"""constraints.txt pins the whole runtime (what `pip install .` brings) and
nothing of the test extras."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_writer():
    spec = importlib.util.spec_from_file_location(
        "write_constraints", ROOT / "scripts" / "write-constraints.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pinned() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name] = version
    return pins


def test_every_runtime_dependency_is_pinned():
    runtime = load_writer().runtime_closure()
    assert {"celery", "redis", "gunicorn", "gevent", "kombu", "flask"} <= set(runtime)
    assert sorted(set(runtime) - set(pinned())) == []


def test_no_test_extra_is_pinned():
    setup = (ROOT / "setup.cfg").read_text()
    extras = setup.split("[options.extras_require]", 1)[1].split("\n[", 1)[0]
    test_only = {
        re.split(r"[<>=\[ ]", line.strip())[0].lower()
        for line in extras.splitlines()[2:]
        if line.strip()
    }
    runtime = set(load_writer().runtime_closure())
    assert test_only and not (test_only - runtime) & set(pinned())

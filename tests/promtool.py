"""promtool for the tests of deploy/prometheus and deploy/grafana: installed by
scripts/ensure-promtool.sh (the Makefile's `test` runs it), and run from here too
when missing, so no test assumes it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def promtool_path() -> str:
    local = Path(sys.executable).parent / "promtool"
    if local.exists():
        return str(local)
    if shutil.which("promtool"):
        return shutil.which("promtool")
    subprocess.run([ROOT / "scripts" / "ensure-promtool.sh", local.parent], check=True)
    return str(local)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool_path(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )

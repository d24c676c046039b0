"""The directory prefork processes share for Prometheus counters (multiprocess mode).

prometheus_client picks multiprocess mode when it is first imported, from
PROMETHEUS_MULTIPROC_DIR, and its docs require the directory to be emptied
between runs (stale files from dead processes would be summed forever). Both
the gunicorn master and the Celery worker's main process call this before
anything imports prometheus_client, so every child inherits the setting.

Standard library only: importing prometheus_client here would fix the mode
too early.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(process_kind: str) -> str:
    """Use PROMETHEUS_MULTIPROC_DIR (emptied) or a fresh private directory; return it."""
    if "prometheus_client" in sys.modules and not os.environ.get(ENV):
        raise RuntimeError("prometheus_client was imported before its multiprocess directory")
    configured = os.environ.get(ENV, "").strip()
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
    else:
        # One directory per run: nothing stale in it, nothing shared with another instance.
        path = Path(tempfile.mkdtemp(prefix=f"webhook-ingest-{process_kind}-metrics-"))
        os.environ[ENV] = str(path)
    return str(path)


def remove_if_private(path: str) -> None:
    """At exit: remove the directory `prepare` made up (an operator's own is left)."""
    if Path(path).name.startswith("webhook-ingest-") and path.startswith(tempfile.gettempdir()):
        shutil.rmtree(path, ignore_errors=True)

"""Celery worker side: `celery -A workers worker|beat|flower` finds `workers.app`.

The app is built on first use, from the environment's settings, not when the
package is imported: a test (or a tool) can import workers.tasks and build an
app for settings of its own with workers.celery_app.create_celery_app.
"""

from __future__ import annotations

from typing import Any

_app = None


def __getattr__(name: str) -> Any:
    global _app
    if name != "app":
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    if _app is None:
        from webhook_ingest.config import ConfigError
        from workers.celery_app import create_celery_app

        try:
            _app = create_celery_app()
        except ConfigError as exc:
            # worker, beat and Flower stop at start naming the variable, in one line
            raise SystemExit(str(exc)) from None
    return _app

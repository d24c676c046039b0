"""One Services per worker process, built after fork (sockets do not survive fork)."""

from __future__ import annotations

from celery.signals import worker_process_init

from webhook_ingest.services import Services, build_services

_services: Services | None = None


def services() -> Services:
    global _services
    if _services is None:
        _services = build_services()
    return _services


@worker_process_init.connect
def _forget_parent_connections(**_: object) -> None:
    global _services
    _services = None

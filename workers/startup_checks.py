"""What the worker says when it starts: configuration that lets it run but not do
all its work (a provider whose webhooks are accepted but whose API it cannot
call). The receiver says the same (webhook_ingest.web.app), and
`webhook-ingest check-config` prints it.
"""

from __future__ import annotations

import logging

from celery.signals import worker_init

from webhook_ingest.config import ConfigError, load_settings
from webhook_ingest.providers import configuration_warnings, load_providers

log = logging.getLogger(__name__)


@worker_init.connect
def _warn(**_: object) -> None:
    # In the main process, before the pool forks: providers are built without the
    # Redis client (each child builds its own, workers.services), so nothing connects.
    try:
        providers = load_providers(load_settings())
    except ConfigError as exc:
        # The first task fails the same way and is retried; say it now, once.
        log.error("configuration error: %s", exc)
        return
    for warning in configuration_warnings(providers):
        log.warning(warning)

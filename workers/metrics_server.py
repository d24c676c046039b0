"""The worker's own Prometheus endpoint, on WORKER_METRICS_PORT (off when 0) at
WORKER_METRICS_ADDRESS (loopback unless set).

Workers usually run on other machines than the receiver, so they are scraped
on their own port rather than through the receiver's /metrics. A prefork
worker's children count into PROMETHEUS_MULTIPROC_DIR files, which the main
process sums when scraped; workers.run prepares the directory before the
`celery` command starts (the Procfile's worker is started through it).
"""

from __future__ import annotations

import logging
import os

from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown

from webhook_ingest.config import load_settings
from webhook_ingest.observability import multiprocess_dir

log = logging.getLogger(__name__)

_state: dict[str, object] = {}


@worker_ready.connect
def _serve(**_: object) -> None:
    settings = load_settings()
    port, address = settings.worker_metrics_port, settings.worker_metrics_address
    if not port:
        return
    if not os.environ.get(multiprocess_dir.ENV):
        # Each child would count in its own memory, and a scrape would see none of it.
        log.error(
            "WORKER_METRICS_PORT is set but the worker was started without a metrics "
            "directory; start it as `python -m workers.run worker` to serve its metrics"
        )
        return
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    try:
        # prometheus_client listens on every interface unless given an address
        server, _thread = start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        # Metrics are for operators; a taken port must not stop deliveries being applied.
        log.error("worker metrics not served on %s port %d: %s", address, port, exc)
        return
    _state["server"] = server
    # The counters the alert rules watch, at 0 from the start (in this process's
    # file; the pool's children add to them): metrics.start_worker_series says why.
    from webhook_ingest.observability import metrics
    from workers.services import services

    metrics.start_worker_series(services().providers)
    log.info("worker metrics on %s port %d", address, port)


@worker_process_shutdown.connect
def _forget_child(**_: object) -> None:
    if os.environ.get(multiprocess_dir.ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())


@worker_shutdown.connect
def _stop(**_: object) -> None:
    server = _state.pop("server", None)
    if server is not None:
        server.shutdown()
    if os.environ.get(multiprocess_dir.ENV):
        multiprocess_dir.remove_if_private(os.environ[multiprocess_dir.ENV])

"""gunicorn settings for the receiver (`web` in the Procfile), all from the environment.

`gunicorn -c gunicorn.conf.py webhook_ingest.wsgi:app`
"""

import logging
import multiprocessing
import os

from gunicorn.glogging import Logger

from webhook_ingest.config import ConfigError, load_settings
from webhook_ingest.observability import json_logs, multiprocess_dir


def _int_env(name: str, default: int, minimum: int = 1, maximum: int | None = None) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        # Fail at start with the variable's name, like the rest of the service.
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        top = "" if maximum is None else f" and at most {maximum}"
        raise SystemExit(f"{name} must be at least {minimum}{top}, got {value}")
    return value


def _choice_env(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, "").strip() or default
    if value not in choices:
        raise SystemExit(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


# PORT and BIND_ADDRESS as the service validates them: a bad value (of any of
# its variables) stops gunicorn here, naming it, before any worker boots.
try:
    service_settings = load_settings()
except ConfigError as exc:
    raise SystemExit(str(exc)) from None
bind = service_settings.bind

# Requests spend their time waiting on Redis and the broker, not the CPU, so
# more processes than cores keep the receiver answering while some wait.
workers = _int_env("WEB_CONCURRENCY", 2 * multiprocessing.cpu_count())
threads = _int_env("WEB_THREADS", 1)

# Slow and idle clients. The receiver faces the internet, and anyone may open
# connections and send nothing, or trickle a request a byte at a time
# (slowloris). A sync worker reads its request itself with no deadline: 4 idle
# connections held all 2 × CPUs workers until the 30 s worker kill, and /healthz
# failed meanwhile. gevent's worker serves each connection in a greenlet, so a
# connection that sends nothing costs a file descriptor, not a worker; and it
# gives every connection `keepalive` seconds to deliver its request line and
# headers (gunicorn wraps each header read in a gevent timer), which is what
# WEB_HEADER_TIMEOUT_SECONDS sets. The body gets its own deadline
# (post_worker_init). gevent patches the standard library in each worker before
# the app is imported (no preload), so nothing holds an unpatched socket or
# lock: redis-py, kombu's publishing (py-amqp for RabbitMQ), the JWKS fetch
# (requests) and prometheus_client's multiprocess files (plain files, one per
# process, as before) use only sockets, locks and files it patches; the master
# imports none of them. gthread (WEB_THREADS > 1) and sync remain for a
# receiver behind a proxy that reads whole requests first (the nginx recipe,
# docs/operations.md); on their own they have neither deadline.
worker_class = _choice_env(
    "WEB_WORKER_CLASS", "gthread" if threads > 1 else "gevent", ("gevent", "gthread", "sync")
)
if threads > 1 and worker_class != "gthread":
    raise SystemExit(f"WEB_THREADS is for WEB_WORKER_CLASS=gthread, not {worker_class}")
# Connections one gevent (or gthread) worker holds at once, idle ones included;
# past it the worker stops accepting until one closes.
worker_connections = _int_env("WEB_WORKER_CONNECTIONS", 1000)
_header_timeout = _int_env("WEB_HEADER_TIMEOUT_SECONDS", 5, maximum=60)
_body_timeout = _int_env("WEB_BODY_TIMEOUT_SECONDS", 10, maximum=300)

# Providers give up on a webhook after a few seconds and retry; a request that
# is still running after 30 s is stuck, and its worker is better replaced.
timeout = 30
# Shorter than the usual orchestrator grace period (30 s) so in-flight
# deliveries finish and get their 2xx before the SIGKILL arrives.
graceful_timeout = 20
# Providers and proxies reuse connections for bursts of deliveries. In the gevent
# worker this is also the header deadline (above): the time a connection has to
# deliver a complete request line and headers, when it opens and after each answer.
keepalive = _header_timeout


# create_app (webhook_ingest.web.app) logs the configuration's warnings (providers
# without verification, providers without an API key) as it builds the app, which
# every worker does: they describe the configuration, not the worker, so only the
# first worker of a start (age 1) says them; the others, and workers that replace
# one later, keep them to themselves while their app is built. The master cannot
# say them itself: building providers imports requests (ssl) before gevent patches.
START_UP_LOGGER = "webhook_ingest.web.app"


class _StartUpWarningsSaidOnce(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


_said_once = _StartUpWarningsSaidOnce()


def post_fork(server, worker):
    if worker.age > 1:
        logging.getLogger(START_UP_LOGGER).addFilter(_said_once)


def post_worker_init(worker):
    logging.getLogger(START_UP_LOGGER).removeFilter(_said_once)
    # The body's deadline (webhook_ingest.web.body_deadline) needs gevent's timers;
    # it wraps whatever app this configuration serves (bench/bare_app.py too).
    if worker_class == "gevent":
        from webhook_ingest.web.body_deadline import BodyDeadline

        worker.wsgi = BodyDeadline(worker.wsgi, _body_timeout)


# Webhook URLs and provider headers are short; anything near these limits is
# abuse, and refusing it in the parser costs less than reading it.
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190

# Every delivery passes here: an access log line per request is paid on the hot
# path, so it is opt-in. Errors always go to stderr.
accesslog = "-" if os.environ.get("GUNICORN_ACCESS_LOG") == "1" else None
errorlog = "-"
# gunicorn's own lines in the service's format (JSON by default), with request
# text that may carry a URL or bearer token withheld (webhook_ingest.observability.json_logs).
logconfig_dict = json_logs.gunicorn_logconfig(access=accesslog is not None)


class AccessLogOnlyWhenAsked(Logger):
    """gunicorn (>= 22) logs every request whenever a logconfig is set, whatever
    `accesslog` says, and builds the line's atoms before the level check: about a
    tenth of a delivery's cost in the receiver. Only `accesslog` turns it on here."""

    def _compute_access_log_enabled(self):
        return bool(self.cfg.accesslog)

    # Older gunicorn has no access_log_enabled and decides inside access().
    def access(self, resp, req, environ, request_time):
        if self.cfg.accesslog:
            super().access(resp, req, environ, request_time)


logger_class = AccessLogOnlyWhenAsked

# No preload: the app's Redis and broker connections must be made in each
# worker after the fork, never shared between processes through it.
preload_app = False

# Only these addresses may set X-Forwarded-* (scheme, client IP); the app's
# own client-IP logic (TRUSTED_PROXY_COUNT) decides what the hops mean.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

# gunicorn >= 25.1 opens a control socket at one path shared by every instance
# of the user (~/.gunicorn/gunicorn.ctl), so a second gunicorn on the host (the
# end-to-end tests, another checkout) would take it over. Operators use signals.
control_socket_disable = True


# Prometheus: every worker process counts into files in one directory, which
# /metrics sums (webhook_ingest.web.metrics_endpoint). Prepared here, in the master,
# before any worker imports prometheus_client; emptied at each start (not on a
# HUP reload, whose new workers keep counting into the same files).
def on_starting(server):
    server.metrics_dir = multiprocess_dir.prepare("web")


def on_exit(server):
    multiprocess_dir.remove_if_private(getattr(server, "metrics_dir", ""))


def child_exit(server, worker):
    # prometheus_client's multiprocess docs: tell it a worker is gone, so live
    # gauges stop counting it (counters keep what the worker counted).
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)

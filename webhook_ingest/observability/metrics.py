"""Every Prometheus metric the service exports, defined once.

Labels are bounded sets only: provider names come from configuration (an
unknown provider in a URL is counted as "unknown"), reasons and outcomes are
fixed strings in the code. Never a job id, delivery id or client address.

Processes: under gunicorn and in a prefork Celery worker each child counts into
files in `PROMETHEUS_MULTIPROC_DIR` (prepared by observability.multiprocess_dir
from gunicorn.conf.py and workers.run, summed by web.metrics_endpoint and
workers.metrics_server); a single process (tests, `flask run`) counts in
memory. Gauges that describe Redis or the broker rather than a process
(dead-letter depth, tracked jobs, queue lengths) are read at scrape time
(operations.depths, web.metrics_endpoint) instead of being counted; their names
are defined here too (ScrapeGauge), so every name the service exports is in this
module (deploy/prometheus and deploy/grafana are checked against it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

# -- receiver -------------------------------------------------------------------

DELIVERIES_RECEIVED = Counter(
    "webhook_deliveries_received_total",
    "Webhook deliveries answered by the receiver, by provider and outcome "
    "(accepted, duplicate, in_flight, or the rejection reason).",
    ["provider", "outcome"],
)
VERIFICATION_FAILURES = Counter(
    "webhook_verification_failures_total",
    "Deliveries refused by signature/token verification, by provider and reason.",
    ["provider", "reason"],
)
ENQUEUE_SECONDS = Histogram(
    "webhook_enqueue_seconds",
    "Time to make a verified delivery durable on the broker (claim and publish, "
    "with publisher confirms on RabbitMQ).",
    ["provider"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

# -- worker ---------------------------------------------------------------------

DELIVERIES_PROCESSED = Counter(
    "webhook_deliveries_processed_total",
    "Deliveries handled by a worker, by provider and outcome (applied, unchanged, "
    "terminal, duplicate, ignored, retried, parked).",
    ["provider", "outcome"],
)
RECEIVE_TO_APPLIED_SECONDS = Histogram(
    "webhook_receive_to_applied_seconds",
    "From the receiver accepting a delivery to its update being applied to job_state.",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
STATE_UPDATES = Counter(
    "webhook_state_updates_total",
    "Normalized updates offered to job_state, by source (webhook, orphan_poll), "
    "normalized status and outcome (applied, unchanged, terminal, duplicate).",
    ["source", "status", "outcome"],
)
UNMATCHED_DELIVERIES = Counter(
    "webhook_unmatched_deliveries_total",
    "Worker attempts that found no registered job for a delivery (retried until "
    "UNMATCHED_RETRY_SECONDS, then parked).",
    ["provider"],
)
DEAD_LETTERED = Counter(
    "webhook_dead_letters_total",
    "Deliveries parked as dead letters, by provider and reason.",
    ["provider", "reason"],
)
DEAD_LETTERS_DROPPED = Counter(
    "webhook_dead_letters_dropped_total",
    "Dead letters dropped, oldest first, to keep a provider within "
    "DEAD_LETTER_MAX_PER_PROVIDER and DEAD_LETTER_MAX_BYTES_PER_PROVIDER.",
    ["provider"],
)

# -- orphan recovery and provider APIs ---------------------------------------------

ORPHANS_DETECTED = Counter(
    "webhook_orphans_detected_total",
    "Jobs found stale (no webhook for ORPHAN_AFTER_SECONDS) and queued for a poll.",
    ["provider"],
)
ORPHAN_POLLS = Counter(
    "webhook_orphan_polls_total",
    "Orphan polls by provider and outcome (applied, unchanged, finished, not_found, "
    "backing_off, gave_up, forgotten).",
    ["provider", "outcome"],
)
ORPHANS_GIVEN_UP = Counter(
    "webhook_orphans_given_up_total",
    "Jobs failed by the orphan poller because their polls kept failing (provider "
    "errors, timeouts, answers it could not read) for ORPHAN_GIVE_UP_SECONDS.",
    ["provider"],
)
PROVIDER_API_ERRORS = Counter(
    "webhook_provider_api_errors_total",
    "Provider API calls that failed, by provider and HTTP status (or 'connection').",
    ["provider", "status"],
)
CONSISTENCY_CHECKS = Counter(
    "webhook_consistency_checks_total",
    "Finished jobs re-polled by the consistency check, by provider and result "
    "(agree, disagree, unavailable).",
    ["provider", "result"],
)

JOURNAL_REDRIVEN = Counter(
    "webhook_journal_redriven_total",
    "Acknowledged deliveries published again because they were overdue in the journal.",
    ["provider"],
)

# -- receiver and worker ----------------------------------------------------------

REPLICA_ACK_TIMEOUTS = Counter(
    "webhook_replica_ack_timeouts_total",
    "Writes fewer than REDIS_MIN_REPLICA_ACKS replicas acknowledged within "
    "REDIS_REPLICA_ACK_TIMEOUT_MS (Redis WAIT), by process (receiver: answered 503; "
    "worker: task retried).",
    ["process"],
)


# -- read at scrape time by the receiver's GET /metrics (web.metrics_endpoint) ----------


@dataclass(frozen=True)
class ScrapeGauge:
    """A gauge the receiver reads from Redis or the broker when scraped, never counted
    by a process (so never summed across processes)."""

    name: str
    documentation: str
    labels: tuple[str, ...] = ()


REDIS_UP = ScrapeGauge("webhook_redis_up", "1 if the state Redis answered this scrape.")
DEAD_LETTER_DEPTH = ScrapeGauge(
    "webhook_dead_letter_depth", "Dead letters kept (DEAD_LETTER_TTL_SECONDS)."
)
TRACKED_JOBS = ScrapeGauge(
    "webhook_tracked_jobs",
    "Unfinished jobs the orphan poller watches, by provider.",
    ("provider",),
)
JOURNAL_DEPTH = ScrapeGauge(
    "webhook_journal_depth",
    "Acknowledged deliveries not finished yet (applied, ignored or parked).",
)
JOURNAL_OLDEST_AGE = ScrapeGauge(
    "webhook_journal_oldest_age_seconds",
    "Age of the journal's first-due unfinished delivery; 0 when the journal is empty.",
)
BROKER_UP = ScrapeGauge(
    "webhook_broker_up",
    "1 if the broker answered this scrape's queue-length read; 0 (and no "
    "webhook_queue_length series) when it did not.",
)
QUEUE_LENGTH = ScrapeGauge(
    "webhook_queue_length",
    "Messages waiting on a broker queue (the backlog): not yet taken by a worker. "
    "Redis broker: LLEN; RabbitMQ: a passive queue_declare's message_count.",
    ("queue",),
)


# -- series that exist from the start --------------------------------------------------
# The alert rules (deploy/prometheus/alerts.yml) watch these with increase() and
# rate(). A labelled series Prometheus first sees already at 1 has no earlier
# sample to compare with, so increase() misses that first event: a job given up
# once after a worker restart would never alert. Each process creates them at 0
# for every configured provider when it starts.

RECEIVER_ALERTED_OUTCOMES = (
    "rate_limited",
    "unverified_rate_limited",
    "verification_failed",
    "queue_unavailable",
    "state_unavailable",
)


def start_receiver_series(providers: Iterable[str]) -> None:
    for provider in providers:
        for outcome in RECEIVER_ALERTED_OUTCOMES:
            DELIVERIES_RECEIVED.labels(provider, outcome)


def start_worker_series(providers: Iterable[str]) -> None:
    for provider in providers:
        ORPHANS_GIVEN_UP.labels(provider)
        DEAD_LETTERS_DROPPED.labels(provider)
        ORPHANS_DETECTED.labels(provider)

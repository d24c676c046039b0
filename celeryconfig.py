"""Celery settings. Each one is here for a reason, written beside it.

The one place Celery is configured, for every process that builds a Celery app
(the worker, beat and Flower through workers.celery_app, the receiver and the
CLI through webhook_ingest.handoff.broker, which only publish). Importing this
module reads nothing: `celery_settings(settings)` turns validated settings
(webhook_ingest.config) into Celery's, so a bad value has already stopped the
process with the variable's name, and a test can build an app for any settings.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from kombu import Exchange, Queue

from webhook_ingest.config import Settings
from webhook_ingest.redis_sentinel import is_sentinel_url
from webhook_ingest.redis_sentinel import parse as parse_sentinel_url

QUEUE = "webhook_ingest"
# Retries of deliveries whose job is not registered yet (workers.tasks): a queue
# of their own, so a flood of deliveries for unknown jobs retrying for
# UNMATCHED_RETRY_SECONDS never stands in line before a first attempt (issue 14,
# finding 4). Every worker consumes both (task_queues below; no -Q anywhere);
# on Redis the worker takes from it only while the main queue is empty.
UNMATCHED_QUEUE = "webhook_ingest.unmatched"

# Task names are the messages' names on the broker: a rename strands queued
# messages of the old name during an upgrade, so they never change. They live
# here, not beside the tasks in workers/, because the receiver and beat send
# them by name without importing the worker.
INGEST_TASK = "webhook_ingest.ingest"
POLL_ORPHANS_TASK = "webhook_ingest.poll_orphans"
POLL_JOB_TASK = "webhook_ingest.poll_job"
ADOPT_MAPPINGS_TASK = "webhook_ingest.adopt_mappings"
CHECK_CONSISTENCY_TASK = "webhook_ingest.check_consistency"
REDRIVE_JOURNAL_TASK = "webhook_ingest.redrive_journal"


def task_time_limit(settings: Settings) -> int:
    """A task must finish (or be killed and requeued) well inside the visibility
    timeout, or the Redis broker redelivers it while it still runs. Provider HTTP
    calls are bounded to ~30 s (webhook_ingest.providers.http)."""
    return int(settings.broker_visibility_timeout_seconds * 0.5)


def max_retry_countdown(settings: Settings) -> int:
    """Retry countdowns are held by the worker as unacknowledged ETA messages; the
    countdown plus the task's run time must stay below the visibility timeout or
    the retry is redelivered as a duplicate (the countdown trap). workers.retries
    caps every countdown with this."""
    return int(settings.broker_visibility_timeout_seconds * 0.4)


def is_redis_broker(settings: Settings) -> bool:
    return settings.broker_url.startswith(("redis://", "rediss://")) or is_sentinel_url(
        settings.broker_url
    )


def kombu_sentinel_broker(url: str) -> dict[str, Any]:
    """Celery's broker settings for a redis+sentinel:// URL (webhook_ingest.redis_sentinel):
    kombu's Sentinel form, one `sentinel://` URL per sentinel joined by `;` (the
    master's password and database on each), the master's name and the
    sentinels' own credentials as transport options."""
    parsed = parse_sentinel_url(url)
    auth = ""
    if parsed.username or parsed.password:
        auth = f"{quote(parsed.username or '', safe='')}:{quote(parsed.password or '', safe='')}@"
    hosts = ";".join(
        f"sentinel://{auth}{f'[{host}]' if ':' in host else host}:{port}/{parsed.db}"
        for host, port in parsed.sentinels
    )
    conf: dict[str, Any] = {
        "broker_url": hosts,
        "broker_transport": "workers.kombu_redis:SentinelTransport",
        "sentinel_options": {
            "master_name": parsed.master_name,
            "sentinel_kwargs": {
                "socket_connect_timeout": 0.5,
                "socket_timeout": 1.0,
                **parsed.sentinel_kwargs(),
            },
        },
    }
    if parsed.tls:
        conf["broker_use_ssl"] = dict(parsed.ssl) or {"ssl_cert_reqs": "required"}
    return conf


def celery_settings(settings: Settings) -> dict[str, Any]:
    """Celery's configuration (lower-case setting names) for these settings."""
    visibility_timeout = settings.broker_visibility_timeout_seconds
    time_limit = task_time_limit(settings)
    broker = settings.broker_url
    sentinel: dict[str, Any] = {}
    if is_sentinel_url(broker):
        sentinel = kombu_sentinel_broker(broker)
        broker = sentinel["broker_url"]
    conf: dict[str, Any] = {
        # Celery prefers the CELERY_BROKER_URL variable over `broker_url`; the
        # read and write URLs win over both, so the settings given here decide.
        "broker_url": broker,
        "broker_read_url": broker,
        "broker_write_url": broker,
        # No result backend: tasks write their outcome to job_state themselves, and
        # storing results would double the Redis writes of every delivery.
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Deliveries carry provider payloads; pickle would let a broker writer run code.
        "result_accept_content": ["json"],
        # A delivery is acknowledged to the broker only after the task finished, and
        # a worker that dies mid-task (SIGKILL, OOM) gets its message requeued, not
        # dropped: together these are what "nothing acknowledged with a 2xx is ever
        # lost" rests on.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Celery acknowledges a task that raised, or that hit its hard time limit,
        # unless told otherwise: a delivery would be gone. With this off a time
        # limit requeues it; workers.tasks retries anything else that escapes (a
        # failed rejection without requeue is still covered by the journal).
        "task_acks_on_failure_or_timeout": False,
        # Tasks are short and their retries are tasks; one message per process in
        # hand at a time keeps a crash from stranding a backlog until the visibility
        # timeout.
        "worker_prefetch_multiplier": 1,
        # If the broker connection drops, unacknowledged messages go back to the
        # broker; finishing them anyway would apply them twice after redelivery
        # (harmless, as apply() is idempotent, but wasteful and noisy).
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_time_limit": time_limit,
        "task_soft_time_limit": time_limit - 5,
        # Publishing from the receiver: a few quick retries, then give up so the
        # HTTP answer is a prompt 503 (the provider retries) instead of a hung
        # request.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.05,
            "interval_step": 0.2,
            "interval_max": 0.3,
        },
        "broker_connection_retry_on_startup": True,
        # The worker keeps reconnecting for as long as the broker is away; it heals
        # by itself.
        "broker_connection_max_retries": None,
        "task_default_queue": QUEUE,
        "task_create_missing_queues": True,
        # The main queue first: its order is what the Redis transport's
        # queue_order_strategy keys on (below).
        "task_queues": _queues(settings),
        # Task events exist for Flower only: off unless a Flower switches them on
        # (it does, every few seconds, while it runs; workers.flower), so the
        # pipeline pays for no event messages nobody reads. "sent" events would
        # cost the receiver a second publish per delivery, so they stay off even
        # then.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        # Flower's event queue: messages it did not read in time, and the queue
        # itself once Flower is gone, are dropped by the broker instead of piling up.
        "event_queue_ttl": 5.0,
        "event_queue_expires": 60.0,
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
        "enable_utc": True,
        **_broker_transport(settings, visibility_timeout),
        **_beat(settings),
    }
    if sentinel:
        conf["broker_transport"] = sentinel["broker_transport"]
        conf["broker_transport_options"].update(sentinel["sentinel_options"])
        if "broker_use_ssl" in sentinel:
            conf["broker_use_ssl"] = sentinel["broker_use_ssl"]
    return conf


def _queues(settings: Settings) -> tuple[Queue, ...]:
    """Both queues, each on a direct exchange of its own name (what Celery creates
    for a missing queue, so messages queued before this existed still route);
    RabbitMQ: quorum queues, like the default one."""
    arguments = None if is_redis_broker(settings) else {"x-queue-type": "quorum"}
    return tuple(
        Queue(name, Exchange(name), routing_key=name, queue_arguments=arguments)
        for name in (QUEUE, UNMATCHED_QUEUE)
    )


def _broker_transport(settings: Settings, visibility_timeout: int) -> dict[str, Any]:
    if not is_redis_broker(settings):
        return {
            "broker_transport_options": {
                # RabbitMQ: wait for the broker's publisher confirm before the
                # receiver answers 2xx, so an acknowledged delivery is on the
                # broker's disk.
                "confirm_publish": True,
            },
            # Fail fast when the broker is down so the receiver answers 503 promptly.
            "broker_connection_timeout": 1.0,
            # Quorum queues: replicated across a RabbitMQ cluster's nodes (Raft) and
            # always durable, with persistent messages, so a delivery acknowledged
            # to a provider survives a broker node's loss, not only its restart.
            # Celery then turns off global QoS (quorum queues refuse it;
            # worker_detect_quorum_queues) and sends retry countdowns through
            # RabbitMQ's native delayed delivery instead of holding them in the
            # worker. A classic queue of the same name must be drained and deleted
            # once before switching (docs/operations.md).
            "task_default_queue_type": "quorum",
            "task_create_missing_queue_type": "quorum",
        }
    return {
        # kombu's Redis transport minus a client object built per ack and per
        # receipt (workers/kombu_redis.py): +27 % worker throughput in `make bench`.
        "broker_transport": "workers.kombu_redis:Transport",
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout,
            # A crashed worker's (or a lost connection's) reserved messages come
            # back only when a live worker's sweep finds them in `unacked` older
            # than the visibility timeout. kombu sweeps every
            # `unacked_restore_interval` s but scans Redis only on every
            # `unacked_restore_throttle`-th sweep (10 x 10 s by default), so they
            # came back up to ~110 s late, not after the visibility timeout
            # (measured: tests/faults/test_faults_worker.py, 93 s+;
            # test_faults_redis.py, 82 s, with a 10 s timeout). The scan is one
            # ZRANGE under a mutex: scan on every sweep, at least twice per timeout.
            "unacked_restore_interval": max(1, min(5, visibility_timeout // 2)),
            "unacked_restore_throttle": 1,
            # The scan holds `unacked_mutex` for milliseconds, but a worker
            # SIGKILLed while holding it leaves it for its expiry, 300 s by
            # default: every worker's sweep was stalled that long (the soak fault
            # test's queue did not drain in 120 s after a worker SIGKILL, its
            # mutex still set). Two sweepers overlapping after a short expiry
            # restore a message twice at worst, which the journal counts as a
            # duplicate.
            "unacked_mutex_expire": max(1, min(5, visibility_timeout // 2)),
            # Fail fast when Redis is down so the receiver answers 503 in about a
            # second.
            "socket_connect_timeout": 0.5,
            "socket_timeout": 2,
            "retry_on_timeout": False,
            "health_check_interval": 30,
            # One BRPOP over both queues returns from the first non-empty key in
            # this order: sorted by name puts "webhook_ingest" before
            # "webhook_ingest.unmatched", so first attempts never wait behind
            # unmatched retries (kombu's default round robin alternates them).
            # The retries wait while the main queue has work: they are retries.
            "queue_order_strategy": "sorted",
        },
    }


def _beat(settings: Settings) -> dict[str, Any]:
    interval = settings.orphan_poll_interval_seconds
    consistency = settings.consistency_check_interval_seconds
    return {
        # Two ordinary beats would double every schedule. RedBeat keeps the
        # schedule in Redis and lets only the holder of a lock run it; a second
        # beat waits as a hot standby and takes over when the lock expires (within
        # redbeat_lock_timeout after the active one dies). Its scheduler here keeps
        # ticking through a Redis outage instead of exiting on the first failed
        # lock extension (workers/beat_scheduler.py).
        "beat_scheduler": "workers.beat_scheduler:Scheduler",
        "redbeat_redis_url": settings.redis_url,
        "redbeat_key_prefix": "webhook_ingest:redbeat",
        "beat_max_loop_interval": 5,
        "redbeat_lock_timeout": 30,
        # RedBeat is handed the service's own client for this URL
        # (workers.beat_scheduler: redis_client's timeouts, Sentinel URLs too),
        # with a 5 s socket timeout. retry_period covers RedBeat's schedule
        # reads (up to five minutes each); the lock is not covered by it, so
        # workers.beat_scheduler retries failed ticks for as long as it takes.
        "redbeat_redis_options": {
            "socket_timeout": 5,
            "retry_period": 300,
        },
        "beat_schedule": {
            "poll-orphans": {
                "task": POLL_ORPHANS_TASK,
                "schedule": interval,
                # a tick that waited longer than an interval is stale: the next
                # one replaces it
                "options": {"expires": interval},
            },
            "adopt-mappings": {
                "task": ADOPT_MAPPINGS_TASK,
                "schedule": interval,
                "options": {"expires": interval},
            },
            # Publishes again what was acknowledged and is overdue; the take is
            # atomic, so two beats or overlapping ticks never redrive twice.
            "redrive-journal": {
                "task": REDRIVE_JOURNAL_TASK,
                "schedule": settings.journal_redrive_interval_seconds,
                "options": {"expires": settings.journal_redrive_interval_seconds},
            },
            # Re-polls a sample of recently finished jobs; its own lock keeps
            # runs apart.
            "check-consistency": {
                "task": CHECK_CONSISTENCY_TASK,
                "schedule": consistency,
                "options": {"expires": consistency},
            },
        },
    }

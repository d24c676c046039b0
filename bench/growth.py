"""Growth: the orphan poller's tick with 1k, 10k and 100k tracked jobs, and memory.

Runs on a database of its own in the private Redis with the service's processes
stopped, so `INFO commandstats` counts only the tick. Jobs are registered through
the product's registry script (bench.common.BulkRegistrar); 10 of them an hour ago,
so they are stale. A tick is `OrphanPoller(services).take_due()`; since a tick moves
the stale jobs an interval ahead, they are put back (ZADD XX, uncounted) between ticks.

Memory is `used_memory` deltas: per tracked job (registering), and per remembered
delivery id: the receiver's claim (`DeliveryClaims.claim`, whose journal record
the worker's `ingest` removes again) plus what the state store keeps per applied delivery
(`ingest`, as the worker calls it: a member of `applied:{job}` and an entry in the
job's capped event list), measured on jobs that already had one delivery.
"""

from __future__ import annotations

import statistics
import time

import redis

from bench.common import PROVIDER, BulkRegistrar, prediction_body

SIZES = (1_000, 10_000, 100_000)
STALE = 10
TICKS = 15
MEMORY_JOBS = 2000
GROWTH_DB = 3


def _commandstats(client: redis.Redis) -> tuple[int, int]:
    """(calls, server microseconds) over every command so far."""
    stats = client.info("commandstats").values()
    return sum(v["calls"] for v in stats), sum(v["usec"] for v in stats)


def _no_rewrite(client: redis.Redis) -> None:
    """Wait (bounded) for a background AOF rewrite to end: its fork would be in the tick."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            return
        time.sleep(0.1)


def _used(client: redis.Redis) -> int:
    return client.info("memory")["used_memory"]


def measure(bench, run: int) -> dict:
    from webhook_ingest.clock import now_ms
    from webhook_ingest.operations.orphan_poller import OrphanPoller
    from webhook_ingest.services import build_services
    from webhook_ingest.state import keys

    url = bench.redis_url.rsplit("/", 1)[0] + f"/{GROWTH_DB}"
    services = build_services(environ={**bench.env, "REDIS_URL": url, "CELERY_BROKER_URL": url})
    client = services.redis
    client.flushdb()
    registrar = BulkRegistrar(client, services)
    poller = OrphanPoller(services)
    live = keys.live_jobs(PROVIDER)
    tag = f"g{run}-{bench.tag}"

    began = time.monotonic()
    now = now_ms()
    stale_at = now - 3600_000
    stale = [(f"job-{tag}-stale-{n}", f"pred-{tag}-stale-{n}") for n in range(STALE)]
    memory_before = _used(client)
    registrar.register(stale, now=stale_at)
    registered = STALE
    ticks = {}
    for size in SIZES:
        fresh = [(f"job-{tag}-{n}", f"pred-{tag}-{n}") for n in range(registered, size)]
        registrar.register(fresh)
        registered = size
        assert client.zcard(live) == size
        ticks[size] = _ticks(client, poller, live, {job: stale_at for job, _ in stale})
    per_job = (_used(client) - memory_before) / registered
    tick_ratio = ticks[SIZES[-1]]["seconds_median"] / ticks[SIZES[0]]["seconds_median"]
    ticks_done = time.monotonic()
    memory = _delivery_memory(services, registrar, tag)
    client.flushdb()
    return {
        "ticks": {str(size): tick for size, tick in ticks.items()},
        "tick_ratio": tick_ratio,
        "providers_per_tick": len(poller.providers_scanned_per_tick),
        "bytes_per_tracked_job": per_job,
        **memory,
        "registration": "pipelined product script" if registrar.pipelined else "register()",
        "seconds_jobs_and_ticks": ticks_done - began,
        "seconds_memory": time.monotonic() - ticks_done,
    }


def _ticks(client, poller, live: str, stale: dict[str, int]) -> dict:
    poller.take_due()  # loads the script (SCRIPT LOAD after NOSCRIPT) outside the count
    client.zadd(live, stale, xx=True)
    _no_rewrite(client)
    seconds, commands, server = [], [], []
    for _ in range(TICKS):
        calls, usec = _commandstats(client)
        began = time.perf_counter()
        due = poller.take_due()
        seconds.append(time.perf_counter() - began)
        after_calls, after_usec = _commandstats(client)
        # minus the first INFO, which the second one counts (and its time: a few µs)
        commands.append(after_calls - calls - 1)
        server.append(after_usec - usec)
        taken = sum(len(ids) for ids in due.values())
        if taken != len(stale):
            raise RuntimeError(f"a tick took {taken} jobs, expected {len(stale)}")
        client.zadd(live, stale, xx=True)
    return {
        "seconds_median": statistics.median(seconds),
        "seconds_min": min(seconds),
        "commands_median": statistics.median(commands),
        "commands": commands,
        "server_usec_median": statistics.median(server),
    }


def _delivery_memory(services, registrar: BulkRegistrar, tag: str) -> dict:
    """Bytes per remembered delivery id, on jobs that already had a delivery."""
    from webhook_ingest.handoff.delivery import Delivery
    from webhook_ingest.ingest import ingest
    from webhook_ingest.state import keys

    client = services.redis
    jobs = [(f"job-{tag}-m{n}", f"pred-{tag}-m{n}") for n in range(MEMORY_JOBS)]
    registrar.register(jobs)

    def deliveries(round_: int, logs_percent: int):
        for job_id, external in jobs:
            body = prediction_body(external).replace(" 50%", f" {logs_percent}%")
            yield Delivery(
                PROVIDER, f"msg_{tag}-{round_}-{job_id}", body, job_id=job_id, journaled=True
            )

    # the first delivery of each job creates its state, event list and applied set
    for delivery in deliveries(1, 50):
        services.claims.claim(delivery, services.journal.record(delivery))
        ingest(delivery, services)
    second = list(deliveries(2, 60))
    base = _used(client)
    for delivery in second:
        services.claims.claim(delivery, services.journal.record(delivery))
    claimed = _used(client)
    # what the receiver journaled with the claims, until the worker finishes them
    journal = sum(
        client.memory_usage(name, samples=0) or 0 for name in (keys.JOURNAL, keys.JOURNAL_MESSAGES)
    )
    outcomes = {ingest(delivery, services).outcome.value for delivery in second}
    applied = _used(client)
    if outcomes != {"applied"}:
        raise RuntimeError(f"second deliveries were {outcomes}, expected applied")
    if client.exists(keys.JOURNAL, keys.JOURNAL_MESSAGES):
        raise RuntimeError("applying the deliveries left journal records behind")
    claim = (claimed - base - journal) / MEMORY_JOBS
    record = (applied - claimed + journal) / MEMORY_JOBS
    return {
        "bytes_per_delivery_claim": claim,
        "bytes_per_applied_record": record,
        "bytes_per_delivery_id": claim + record,
        "bytes_per_in_flight_delivery": journal / MEMORY_JOBS,
        "in_flight_body_bytes": statistics.mean(len(d.body) for d in second),
    }

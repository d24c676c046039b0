"""Growth: the orphan poller's tick with 1k, 10k and 100k tracked jobs, and memory.

Runs on a database of its own in the private Redis with the service's processes
stopped, so `INFO commandstats` counts only the tick. Jobs are registered through
the product's registry script (bench.common.BulkRegistrar); 10 of them an hour ago,
so they are stale. A tick is `OrphanPoller(services).take_due()`; since a tick moves
the stale jobs an interval ahead, they are put back (ZADD XX, uncounted) between ticks.

Memory is `used_memory` deltas: per tracked job (registering), and per remembered
delivery id: the receiver's claim (`DeliveryClaims.claim`: a digest in its
provider's seen-delivery bucket; its journal record the worker's `ingest` removes
again) plus what the state store keeps per finished delivery to recognize it
(`ingest`, as the worker calls it: nothing for a journaled delivery; versions
before kept a member of `applied:{job}`), measured on jobs that already had one
delivery. The delivery's entry in the job's event trace (capped at 20 per job) is
measured and reported on its own. From bytes per id and each provider's window:
the Redis that a day of ids at 100/s holds, for an all-OpenAI and a
Replicate-heavy mix (MIXES). `python -m bench.growth` runs the memory part alone.
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


# A day at 100 deliveries/s, for two mixes (shares of the deliveries per provider):
# the worst case, every delivery from the provider with the longest window, and a
# mix where most come from providers that stop retrying within minutes.
DAY_RATE = 100
MIXES = {
    "all_openai": {"openai": 1.0},
    "replicate_heavy": {"replicate": 0.8, "runpod": 0.1, "openai": 0.1},
}


def _delivery_memory(services, registrar: BulkRegistrar, tag: str) -> dict:
    """Bytes per remembered delivery id, on jobs that already had a delivery.

    Split three ways: the receiver's claim (what remembers the id for its provider's
    window), what the worker keeps per finished delivery to recognize it again (the
    job's applied set, for versions that had one), and the delivery's entry in the
    job's event trace — which is per job, capped at EVENTS_KEEP entries whatever the
    number of deliveries, so it is reported on its own."""
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

    def usage(key_of) -> int:
        """Bytes of one key family of these jobs (MEMORY USAGE, every element counted)."""
        return sum(client.memory_usage(key_of(job), samples=0) or 0 for job, _ in jobs)

    # the first delivery of each job creates its state, event list (and applied set)
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
    events_before = usage(keys.job_events)
    applied_before = usage(keys.applied_deliveries)
    outcomes = {ingest(delivery, services).outcome.value for delivery in second}
    events = (usage(keys.job_events) - events_before) / MEMORY_JOBS
    # what the worker keeps to recognize a finished delivery: counted key by key, as
    # used_memory's delta is within the noise of freeing the journal records
    record = (usage(keys.applied_deliveries) - applied_before) / MEMORY_JOBS
    if outcomes != {"applied"}:
        raise RuntimeError(f"second deliveries were {outcomes}, expected applied")
    if client.exists(keys.JOURNAL, keys.JOURNAL_MESSAGES):
        raise RuntimeError("applying the deliveries left journal records behind")
    claim = (claimed - base - journal) / MEMORY_JOBS
    return {
        "bytes_per_delivery_claim": claim,
        "bytes_per_applied_record": record,
        "bytes_per_delivery_id": claim + record,
        "bytes_per_job_event": events,
        "bytes_per_in_flight_delivery": journal / MEMORY_JOBS,
        "in_flight_body_bytes": statistics.mean(len(d.body) for d in second),
        **_a_day(services, claim + record),
    }


def _a_day(services, bytes_per_id: float) -> dict:
    """Redis held for remembered ids at DAY_RATE deliveries/s after a day, and at
    steady state, for each mix: each provider's ids are held for its window (at most
    1.5 windows: handoff.seen's buckets), from the measured bytes per id."""
    try:
        from webhook_ingest.handoff import seen
    except ImportError:  # a version before the buckets (paired runs against main)
        seen = None

    def window(name: str) -> int:
        provider = services.providers[name]
        # versions before per-provider windows: every provider kept the default
        return getattr(provider, "delivery_dedup_seconds", services.settings.dedup_ttl_seconds)

    # versions before the buckets kept each id exactly its window
    held = 1.5 if seen is not None else 1.0
    figures = {}
    for mix, shares in MIXES.items():
        after_a_day = sum(
            DAY_RATE * share * min(86_400, held * window(name)) for name, share in shares.items()
        )
        steady = sum(DAY_RATE * share * held * window(name) for name, share in shares.items())
        figures[f"mb_ids_day_{mix}"] = after_a_day * bytes_per_id / 1e6
        figures[f"mb_ids_steady_{mix}"] = steady * bytes_per_id / 1e6
    return figures


def memory_only(runs: int = 2) -> list[dict]:
    """`python -m bench.growth`: the memory figures alone, on a private redis-server
    configured as `make bench` runs it (no service processes needed)."""
    import os
    import tempfile
    from pathlib import Path

    from bench.common import Processes, start_redis
    from webhook_ingest.services import build_services

    work_dir = Path(tempfile.mkdtemp(prefix="webhook-growth-"))
    procs = Processes(work_dir)
    try:
        url, _ = start_redis(procs, work_dir / "redis")
        env = {
            **os.environ,
            "REDIS_URL": url,
            "CELERY_BROKER_URL": url,
            "RATE_LIMIT": "1000000/second",  # as make bench runs the service
        }
        results = []
        for run in range(1, runs + 1):
            services = build_services(environ=env)
            services.redis.flushdb()
            memory = _delivery_memory(services, BulkRegistrar(services.redis, services), f"m{run}")
            services.redis.flushdb()
            results.append(memory)
        return results
    finally:
        procs.stop_all()


if __name__ == "__main__":
    import json

    print(json.dumps(memory_only(), indent=2))

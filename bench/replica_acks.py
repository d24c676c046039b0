"""What REDIS_MIN_REPLICA_ACKS=1 costs the receiver (issue 18, item 2).

The bench's Redis gets one replica on loopback (a second redis-server with
`--replicaof`, AOF on like its master), and two receivers run against the master
under the same gunicorn command: one with REDIS_MIN_REPLICA_ACKS=0 (no WAIT), one
with 1 (the hand-off's script, a mark and WAIT in one pipeline). wrk replays fresh
signed deliveries at each in turn, in short alternating windows, so a neighbour's
load on this shared machine falls on both; the figures are req/s and latency of
each side and the ratio. Any non-2xx (a 503 from a WAIT that fell short) is an
error in wrk's count and reported as a problem.

Run last (run.measure_all): the replica stays attached only for this phase, so
no other figure pays for replication.
"""

from __future__ import annotations

import sys
from pathlib import Path

import redis

from bench.common import QUEUE, UNMATCHED_QUEUE, free_port, http_ok, start_redis, wait_for
from bench.receiver import WARMUP_SECONDS, run_wrk, write_slices

# Starting with "redis": stopped after the receivers, like the bench's own Redis.
REPLICA = "redis-replica"
WINDOW_SECONDS = 2
WINDOWS = 4  # per side: 8 s of each


def start_replica(bench) -> redis.Redis:
    master_port = bench.redis.connection_pool.connection_kwargs["port"]
    _, replica = start_redis(
        bench.procs,
        bench.work_dir / "replica",
        REPLICA,
        "--replicaof",
        "127.0.0.1",
        str(master_port),
    )

    def acknowledges() -> bool:
        try:
            bench.redis.set("bench:replication-probe", "1")
            return bench.redis.wait(1, 100) == 1
        except redis.RedisError:
            return False

    wait_for(acknowledges, 60, f"the replica to sync ({REPLICA}.log)")
    return replica


def measure(bench) -> dict:
    replica = start_replica(bench)
    gunicorn = [str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py"]
    urls = {}
    for name, wanted in (("min0", "0"), ("min1", "1")):
        port = free_port()
        env = {**bench.env, "PORT": str(port), "REDIS_MIN_REPLICA_ACKS": wanted}
        bench.procs.spawn(f"web-{name}", [*gunicorn, "webhook_ingest.wsgi:app"], env)
        urls[name] = f"http://127.0.0.1:{port}"
    try:
        for name, url in urls.items():
            wait_for(lambda url=url: http_ok(f"{url}/readyz"), 60, f"web-{name}.log")
        return _alternate(bench, urls)
    finally:
        for name in urls:
            bench.procs.stop(f"web-{name}")
        bench.procs.stop(REPLICA)
        replica.close()
        bench.redis.delete(QUEUE, UNMATCHED_QUEUE)


def _alternate(bench, urls: dict[str, str]) -> dict:
    work, tag = bench.work_dir, f"ra-{bench.tag}"
    files = {"warm": work / "ra-warm"}
    write_slices(bench.signer, files["warm"], f"{tag}-warm", WARMUP_SECONDS)
    results: dict[str, list[dict]] = {name: [] for name in urls}
    for url in urls.values():
        run_wrk(url, files["warm"], WARMUP_SECONDS)  # both sides: duplicates after the first
    bench.redis.config_resetstat()
    for window in range(WINDOWS):
        for name, url in urls.items():
            prefix = work / f"ra-{name}-w{window}"
            write_slices(bench.signer, prefix, f"{tag}-{name}-w{window}", WINDOW_SECONDS)
            results[name].append(run_wrk(url, prefix, WINDOW_SECONDS))
    waits = int(bench.redis.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))
    out: dict = {}
    problems = []
    for name, runs in results.items():
        requests = sum(r["requests"] for r in runs)
        seconds = sum(r["duration_us"] for r in runs) / 1e6
        errors = sum(r["errors_total"] for r in runs)
        out[name] = {
            "rps": requests / seconds,
            "requests": requests,
            "window_rps": [round(r["rps"]) for r in runs],
            # wrk's percentiles per window; the median window's is shown
            "latency_p50_ms": sorted(r["latency_us"]["p50"] for r in runs)[len(runs) // 2] / 1000,
            "latency_p99_ms": sorted(r["latency_us"]["p99"] for r in runs)[len(runs) // 2] / 1000,
            "errors": errors,
        }
        if errors:
            problems.append(f"{name}: {errors} errors (non-2xx included)")
        if any(r["wraps"] for r in runs):
            problems.append(f"{name}: delivery ids reused")
    out["ratio"] = out["min1"]["rps"] / out["min0"]["rps"]
    # one WAIT per delivery of the MIN=1 side, none for the other
    out["waits_per_min1_request"] = waits / max(1, out["min1"]["requests"])
    out["problems"] = problems
    for path in work.glob("ra-*.tsv"):
        path.unlink(missing_ok=True)
    return out

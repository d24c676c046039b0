"""W: deliveries/s the Celery worker drains from a pre-filled queue, over a plain loop.

The queue is filled with the product's own `enqueue` (what the receiver calls) while
no worker runs; then the worker starts as the Procfile starts it, and its rate is
counted from the first broadcast to the last (start-up excluded), as seen by the
subscriber on `job_updates`. The plain loop (bench/plain_loop.py) is one process
calling `webhook_ingest.ingest.ingest` directly on the same shape of deliveries.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from bench.common import PROVIDER, QUEUE, ROOT, prediction_body

DELIVERIES = 3000


def deliveries(tag: str, count: int, signer):
    """Job registrations and the deliveries a receiver would have enqueued for them."""
    from webhook_ingest.handoff.delivery import Delivery

    jobs = [(f"job-{tag}-{n}", f"pred-{tag}-{n}") for n in range(count)]
    items = [(f"msg_{tag}-{n}", prediction_body(external)) for n, (_, external) in enumerate(jobs)]
    out = []
    for (job_id, _), (msg_id, stamp, _sig, body) in zip(
        jobs, signer.sign_batch(items), strict=True
    ):
        headers = {"webhook-id": msg_id, "webhook-timestamp": stamp}
        headers["content-type"] = "application/json"
        out.append(Delivery(PROVIDER, msg_id, body, job_id=job_id, headers=headers))
    return jobs, out


def worker_args() -> list[str]:
    # As the Procfile's `worker:` line (concurrency: Celery's default, one per CPU).
    return [sys.executable, "-m", "workers.run", "worker", "--loglevel=INFO"]


def measure(bench, run: int) -> dict:
    from webhook_ingest.handoff.publish import enqueue
    from workers import app as celery_app

    if bench.worker_name:  # the previous run's worker: this run starts its own
        bench.procs.stop(bench.worker_name)
        bench.worker_name = None
    plain = plain_loop(bench, run)

    tag = f"w{run}-{bench.tag}"
    jobs, queued = deliveries(tag, DELIVERIES, bench.signer)
    bench.registrar.register(jobs)
    started = time.monotonic()
    for delivery in queued:
        enqueue(celery_app, delivery)
    fill_seconds = time.monotonic() - started
    if bench.redis.llen(QUEUE) != DELIVERIES:
        raise RuntimeError(f"queue holds {bench.redis.llen(QUEUE)}, expected {DELIVERIES}")

    bench.subscriber.reset()
    bench.procs.spawn(f"worker-w{run}", worker_args(), bench.env)
    bench.worker_name = f"worker-w{run}"
    prefix = f"job-{tag}-"
    last_count, last_change = -1, time.monotonic()
    while True:
        time.sleep(0.25)
        bench.subscriber.poll()
        count = sum(1 for job in bench.subscriber.arrivals if job.startswith(prefix))
        if count >= DELIVERIES:
            break
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > 20:
            raise RuntimeError(f"worker stalled at {count}/{DELIVERIES} (see worker-w{run}.log)")
    times = sorted(t for job, t in bench.subscriber.arrivals.items() if job.startswith(prefix))
    seconds = times[-1] - times[0]
    rate = (len(times) - 1) / seconds
    return {
        "deliveries": DELIVERIES,
        "fill_seconds": fill_seconds,
        "drain_seconds": seconds,
        "worker_rate": rate,
        "plain": plain,
        "plain_rate": plain["rate"],
        "ratio": rate / plain["rate"],
        "start_to_first_seconds": times[0] - started,
    }


def plain_loop(bench, run: int) -> dict:
    args = [sys.executable, "-m", "bench.plain_loop", f"p{run}-{bench.tag}", str(DELIVERIES)]
    done = subprocess.run(
        args, cwd=ROOT, env=bench.env, capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"plain loop failed: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])

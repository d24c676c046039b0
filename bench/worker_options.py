"""Worker options side by side, one run: `python -m bench.worker_options [ROUNDS] [NAME ...]`.

Not part of `make bench`: the tool issue 16 asked for to choose the worker's shape
(pool, prefetch, bookkeeping) by measuring each candidate against the same plain loop
in one run, the candidates taking turns round after round so a neighbour's burst
lands on all of them. Each window is W's own measurement (bench/worker.py): 3,000
deliveries queued with the receiver's `enqueue`, the worker started, its rate
counted from the first broadcast to the last. It also reports the CPU seconds the
worker's main process, its pool children and Redis spent per 1,000 deliveries, which
says which of them a change relieved.

Candidates that need a change the product does not ship run through
`bench.worker_variant`, which applies the named patch and then starts Celery in the
same process (prefork children inherit it).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import QUEUE, Processes, new_secret, start_redis
from bench.worker import DELIVERIES, deliveries, plain_loop, worker_args

VARIANT = [sys.executable, "-m", "bench.worker_variant"]

# name -> (argv, extra environment)
CANDIDATES: dict[str, tuple[list[str], dict[str, str]]] = {
    "shipped": (worker_args(), {}),
    "acks-immediate": ([*VARIANT, "acks_immediate", "--loglevel=INFO"], {}),
    "acks-immediate-prefetch4": (
        [*VARIANT, "acks_immediate", "--loglevel=INFO", "--prefetch-multiplier=4"],
        {},
    ),
    "no-multi": ([*VARIANT, "no_multi", "--loglevel=INFO"], {}),
    "no-is-open": ([*VARIANT, "no_is_open", "--loglevel=INFO"], {}),
    "prefetch4": ([*worker_args(), "--prefetch-multiplier=4"], {}),
    "conc3": ([*worker_args(), "--concurrency=3"], {}),
    "gevent": ([*worker_args(), "--pool=gevent", "--concurrency=20"], {}),
    "solo": ([*worker_args(), "--pool=solo"], {}),
}


class Run:
    def __init__(self, work_dir: Path) -> None:
        self.procs = Processes(work_dir)
        self.redis_url, self.redis = start_redis(self.procs, work_dir / "redis")
        self.redis_pid = self.procs.running["redis"].pid
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "WEB_"))}
        env.update(
            REDIS_URL=self.redis_url,
            CELERY_BROKER_URL=self.redis_url,
            WEBHOOK_SECRET_REPLICATE=new_secret(),
            RATE_LIMIT="1000000/second",
            LOG_LEVEL="INFO",
            WORKER_METRICS_PORT="0",
        )
        self.env = env
        os.environ.clear()
        os.environ.update(env)

        from bench.common import BulkRegistrar, Signer
        from bench.subscriber import Subscriber
        from webhook_ingest.services import build_services

        self.signer = Signer(env["WEBHOOK_SECRET_REPLICATE"])
        self.registrar = BulkRegistrar(build_services().redis, build_services())
        self.subscriber = Subscriber(self.redis_url)
        self.tag = os.urandom(3).hex()

    def window(self, name: str, n: int) -> dict:
        from webhook_ingest.handoff.publish import enqueue
        from workers import app as celery_app

        argv, extra = CANDIDATES[name]
        tag = f"{name}-{n}-{self.tag}"
        jobs, queued = deliveries(tag, DELIVERIES, self.signer)
        self.registrar.register(jobs)
        for delivery in queued:
            enqueue(celery_app, delivery)
        assert self.redis.llen(QUEUE) == DELIVERIES
        self.subscriber.reset()
        proc_name = f"worker-{tag}"
        proc = self.procs.spawn(proc_name, argv, {**self.env, **extra})
        profile = os.environ.get("WORKER_OPTIONS_PROFILE")  # a directory: py-spy each window
        if profile:
            spy = [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")]
            # after workers.run's exec, which py-spy does not follow
            time.sleep(1.0)
            spy += ["record", "-p", str(proc.pid), "--subprocesses", "--format", "raw"]
            spy += ["-d", "8", "-r", "250", "-o", f"{profile}/{name}-{n}.txt"]
            self.procs.spawn(f"spy-{tag}", spy, self.env)
        prefix = f"job-{tag}-"
        cpu_at_first = None
        last, last_change = -1, time.monotonic()
        while True:
            time.sleep(0.1)
            self.subscriber.poll()
            count = sum(1 for job in self.subscriber.arrivals if job.startswith(prefix))
            if count and cpu_at_first is None:
                cpu_at_first = self._cpu(proc.pid)
            if count >= DELIVERIES:
                break
            if count != last:
                last, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > 20:
                raise RuntimeError(f"{name} stalled at {count}")
        cpu_end = self._cpu(proc.pid)
        self.procs.stop(proc_name)
        times = sorted(t for j, t in self.subscriber.arrivals.items() if j.startswith(prefix))
        rate = (len(times) - 1) / (times[-1] - times[0])
        per_k = {k: (cpu_end[k] - cpu_at_first[k]) * 1000 / DELIVERIES for k in cpu_end}
        return {"rate": rate, "cpu_s_per_1k": per_k}

    def _cpu(self, pid: int) -> dict[str, float]:
        def used(p: psutil.Process) -> float:
            t = p.cpu_times()
            return t.user + t.system

        main = psutil.Process(pid)
        # workers.run execs celery: the pid stays the main process
        children = sum(used(c) for c in main.children(recursive=True))
        redis_cpu = used(psutil.Process(self.redis_pid))
        return {"main": used(main), "children": children, "redis": redis_cpu}

    def close(self) -> None:
        self.subscriber.close()
        self.procs.stop_all()


def main(rounds: int, names: list[str]) -> None:
    work_dir = Path(tempfile.mkdtemp(prefix="worker-options-"))
    run = Run(work_dir)
    results: dict[str, list] = {name: [] for name in ["plain", *names]}
    try:
        for n in range(rounds):
            plain = plain_loop(run, n)
            results["plain"].append(plain["rate"])
            print(f"round {n}: plain {plain['rate']:.0f}/s", flush=True)
            for name in names:
                got = run.window(name, n)
                got["W"] = got["rate"] / plain["rate"]
                results[name].append(got)
                cpu = " ".join(f"{k} {v:.2f}" for k, v in got["cpu_s_per_1k"].items())
                print(
                    f"round {n}: {name:12} {got['rate']:6.0f}/s  W {got['W']:.2f}  cpu s/1k: {cpu}",
                    flush=True,
                )
    finally:
        run.close()
        shutil.rmtree(work_dir, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    args = sys.argv[1:]
    rounds = int(args.pop(0)) if args and args[0].isdigit() else 3
    main(rounds, args or list(CANDIDATES))

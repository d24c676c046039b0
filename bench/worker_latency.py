"""Latency at a fixed rate with each worker candidate, alternated in one run:
`python -m bench.worker_latency RATE ROUNDS NAME [NAME ...]` (names from
bench/worker_options.py). Not part of `make bench`.

The whole pipeline runs as `make bench` runs it (bench.run.Bench: a private Redis,
the receiver under gunicorn); only the worker changes between windows. Each window
is `bench.latency.step`: an open-loop generator, send -> the job's broadcast.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import latency
from bench.common import Processes, wait_for
from bench.run import Bench
from bench.worker_options import CANDIDATES

SECONDS = 8


def main(rate: float, rounds: int, names: list[str]) -> None:
    work_dir = Path(tempfile.mkdtemp(prefix="worker-latency-"))
    procs = Processes(work_dir)
    bench = Bench(work_dir, procs)
    try:
        bench.start()
        for n in range(rounds):
            for name in names:
                argv, extra = CANDIDATES[name]
                worker = f"worker-{name}-{n}"
                procs.spawn(worker, argv, {**bench.env, **extra})
                bench.worker_name = worker
                log = work_dir / f"{worker}.log"
                wait_for(lambda log=log: b"ready." in log.read_bytes(), 60, f"{worker} ready")
                time.sleep(1)
                got = latency.step(bench, rate, SECONDS, f"{name}-{n}-{bench.tag}", True)
                lat = got["latency_ms"]
                print(
                    f"round {n}: {name:16} @{rate:.0f}/s p50 {lat['p50']:.1f} "
                    f"p95 {lat['p95']:.1f} p99 {lat['p99']:.1f} ms, achieved "
                    f"{got['achieved_rate']:.0f}/s, missing {got['missing']}",
                    flush=True,
                )
                procs.stop(worker)
                bench.worker_name = None
    finally:
        bench.close()
        procs.stop_all()
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main(float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])

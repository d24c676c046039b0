"""`python -m bench.capacity`: what one receiver process, one worker process and one
Redis each carry, for the capacity section of docs/operations.md.

Not part of `make bench` (whose figures are ratios against a ceiling); these are
absolute figures of this machine, per process and per delivery:

- **receiver**: one gunicorn gevent worker (`WEB_CONCURRENCY=1`, the Procfile's
  command otherwise) under `wrk -t1 -c16` replaying pre-signed deliveries for
  registered jobs (bench/wrk_replay.lua) while no worker runs: accepted
  deliveries/s, and the receiver's CPU per delivery (its process group, /proc);
- **worker**: `python -m workers.run worker --concurrency=1` (the prefork main
  process and one child) draining what the receiver journaled and queued:
  deliveries/s from its first applied delivery to the last, CPU per delivery;
- **Redis** over each phase, per delivery: `INFO commandstats` calls by command,
  network bytes in and out, AOF bytes, the server's CPU (main thread and whole
  process, less its idle rate measured first), and `used_memory` while the
  deliveries are in flight and after they are applied.

`--broker same` (the default deployment: the broker is a database of the state
Redis, one script hands off) or `separate` (the broker on a second redis-server:
the receiver claims and journals in the state Redis, then publishes; the state
Redis then sees what it would see with RabbitMQ as the broker), or `both`.

Every delivery names a new job, so "held after" includes a job state and an event
list per delivery, which real traffic (several deliveries per job) spreads out.
The harness's own commands (its INFO samples and the journal polls that time the
drain) are taken out of the counts. The machine is shared: run it under
`flock /tmp/bench.lock` and read the figures as this machine's, on this day.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import (
    PROVIDER,
    ROOT,
    Processes,
    Signer,
    free_port,
    http_ok,
    new_secret,
    prediction_body,
    start_redis,
    wait_for,
)
from bench.run import STRIPPED_ENV

NAN = float("nan")
RESULTS = ROOT / "bench" / "results" / "capacity.json"
CONNECTIONS = 16
WARMUP_SECONDS = 1
# Enough deliveries that wrk never wraps (a wrapped delivery is a cheap duplicate).
SIZED_FOR_RATE = 4000
JOURNAL = "webhook_ingest:journal"  # state.keys.JOURNAL, checked at start


def redis_sample(client) -> dict:
    """The counters a phase's delta is taken over (one INFO call per section)."""
    commandstats = client.info("commandstats")
    commands = {
        name.removeprefix("cmdstat_"): stats["calls"] for name, stats in commandstats.items()
    }
    # time inside the scripts (their own calls included), without any I/O
    script_usec = sum(commandstats.get(f"cmdstat_{n}", {}).get("usec", 0) for n in SCRIPT_CALLS)
    stats, cpu = client.info("stats"), client.info("cpu")
    memory, persistence = client.info("memory"), client.info("persistence")
    return {
        "at": time.monotonic(),
        "commands": commands,
        "script_usec": script_usec,
        # one per read of a client's socket: a round trip (a pipeline is one)
        "reads": stats["total_reads_processed"],
        "net_in": stats["total_net_input_bytes"],
        "net_out": stats["total_net_output_bytes"],
        "cpu_main": cpu["used_cpu_sys_main_thread"] + cpu["used_cpu_user_main_thread"],
        "cpu": cpu["used_cpu_sys"] + cpu["used_cpu_user"],
        "used_memory": memory["used_memory"],
        "aof": persistence.get("aof_current_size", 0),
    }


SCRIPT_CALLS = ("evalsha", "eval")
# The INFO calls one redis_sample makes: taken out of the phase's round trips.
SAMPLE_INFO_CALLS = 5
# The harness's own commands; the product calls neither for a delivery.
HARNESS_COMMANDS = ("info", "zcard")


def group_cpu(pgid: int) -> tuple[float, float]:
    """(CPU seconds of every process in process group `pgid`, of its leader alone),
    from /proc: the receiver's or worker's whole cost, children included."""
    tick = os.sysconf("SC_CLK_TCK")
    total = leader = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)"
        if int(fields[2]) != pgid:  # pgrp
            continue
        used = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        total += used
        if int(entry.name) == pgid:
            leader = used
    return total, leader


def phase(before: dict, after: dict, deliveries: int, idle: dict, polls: int = 0) -> dict:
    """Per-delivery Redis figures between two samples."""
    seconds = after["at"] - before["at"]
    calls = {
        name: after["commands"].get(name, 0) - before["commands"].get(name, 0)
        for name in after["commands"]
    }
    calls = {
        name: count for name, count in calls.items() if count > 0 and name not in HARNESS_COMMANDS
    }
    n = max(deliveries, 1)
    harness_reads = SAMPLE_INFO_CALLS + polls
    return {
        "deliveries": deliveries,
        "seconds": seconds,
        "round_trips": (after["reads"] - before["reads"] - harness_reads) / n,
        # commandstats counts a script's own calls too: EVALSHA and what it ran
        "commands_per_delivery": sum(calls.values()) / n,
        "by_command": {name: round(count / n, 3) for name, count in sorted(calls.items())},
        "net_in_bytes": (after["net_in"] - before["net_in"]) / n,
        "net_out_bytes": (after["net_out"] - before["net_out"]) / n,
        # nan when Redis rewrote its AOF during the phase (the file shrank)
        "aof_bytes": (after["aof"] - before["aof"]) / n if after["aof"] >= before["aof"] else NAN,
        "script_us": (after["script_usec"] - before["script_usec"]) / n,
        "cpu_main_us": max(0.0, after["cpu_main"] - before["cpu_main"] - idle["main"] * seconds)
        / n
        * 1e6,
        "cpu_us": max(0.0, after["cpu"] - before["cpu"] - idle["all"] * seconds) / n * 1e6,
    }


def idle_rate(client, seconds: float = 2.0) -> dict:
    """Redis's CPU seconds per second with nothing to do (its cron, our INFO)."""
    first = redis_sample(client)
    time.sleep(seconds)
    last = redis_sample(client)
    span = last["at"] - first["at"]
    return {
        "main": (last["cpu_main"] - first["cpu_main"]) / span,
        "all": (last["cpu"] - first["cpu"]) / span,
    }


class Capacity:
    def __init__(self, mode: str, work_dir: Path, procs: Processes, seconds: float) -> None:
        self.mode, self.work_dir, self.procs, self.seconds = mode, work_dir, procs, seconds
        self.tag = uuid.uuid4().hex[:6]
        self.polls = 0  # the harness's ZCARDs on the state Redis in the current phase

    def start(self) -> None:
        self.state_url, self.state = start_redis(self.procs, self.work_dir / "redis")
        if self.mode == "separate":
            self.broker_url, self.broker = start_redis(
                self.procs, self.work_dir / "redis-broker", name="redis-broker"
            )
        else:
            self.broker_url, self.broker = self.state_url.rsplit("/", 1)[0] + "/1", None
        secret = new_secret()
        env = {k: v for k, v in os.environ.items() if k not in STRIPPED_ENV}
        env.update(
            REDIS_URL=self.state_url,
            CELERY_BROKER_URL=self.broker_url,
            WEBHOOK_SECRET_REPLICATE=secret,
            RATE_LIMIT="1000000/second",
            LOG_LEVEL="INFO",
            WORKER_METRICS_PORT="0",
            WEB_CONCURRENCY="1",
            ADMIN_TOKEN="bench-" + uuid.uuid4().hex,
        )
        self.env = env
        os.environ.clear()  # this process registers jobs with the product's own code
        os.environ.update(env)

        from bench.common import BulkRegistrar
        from webhook_ingest.services import build_services
        from webhook_ingest.state import keys

        if keys.JOURNAL != JOURNAL:
            raise SystemExit(f"the journal key is now {keys.JOURNAL!r}: update bench.capacity")
        self.signer = Signer(secret)
        self.registrar = BulkRegistrar(build_services().redis, None)
        self.port = free_port()
        gunicorn = [str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py"]
        self.web = self.procs.spawn(
            f"web-{self.mode}",
            [*gunicorn, "webhook_ingest.wsgi:app"],
            {**env, "PORT": str(self.port)},
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(lambda: http_ok(f"{self.url}/readyz"), 60, "the receiver")

    def slice_file(self, name: str, seconds: float) -> Path:
        """Signed deliveries for new, registered jobs: one file for wrk's one thread."""
        count = math.ceil(SIZED_FOR_RATE * seconds)
        jobs, items = [], []
        for n in range(count):
            key = f"{self.tag}-{name}-{n}"
            jobs.append((f"job-{key}", f"pred-{key}"))
            items.append((f"msg_{key}", prediction_body(f"pred-{key}")))
        self.registrar.register(jobs)
        prefix = self.work_dir / f"{self.mode}-{name}"
        with open(f"{prefix}-0.tsv", "w") as out:
            for (job_id, _), signed in zip(jobs, self.signer.sign_batch(items), strict=True):
                msg_id, stamp, signature, body = signed
                out.write(f"/webhook/{PROVIDER}/{job_id}\t{msg_id}\t{stamp}\t{signature}\t{body}\n")
        return prefix

    def wrk(self, prefix: Path, seconds: float) -> dict:
        args = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{round(seconds)}s", "--timeout", "5s"]
        args += ["-s", str(ROOT / "bench" / "wrk_replay.lua"), self.url, "--", str(prefix)]
        done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        result = json.loads(line.removeprefix("BENCH_JSON "))
        if result["wraps"] or any(result["errors"].values()):
            raise RuntimeError(f"invalid receiver window: {result}")
        return result

    def settled_journal(self) -> int:
        """The journal's size once requests still in the receiver are in."""
        size, since = self.state.zcard(JOURNAL), time.monotonic()
        self.polls += 1
        while time.monotonic() - since < 0.5:
            time.sleep(0.1)
            now = self.state.zcard(JOURNAL)
            self.polls += 1
            if now != size:
                size, since = now, time.monotonic()
        return size

    def round(self, number: int) -> dict:
        warm = self.slice_file(f"r{number}warm", WARMUP_SECONDS * 1.5)
        window = self.slice_file(f"r{number}", self.seconds * 1.5)
        self.wrk(warm, WARMUP_SECONDS)
        journaled = self.settled_journal()
        idle = idle_rate(self.state)

        # The receiver alone: no worker runs.
        cpu_before = group_cpu(self.web.pid)
        before = self.samples()
        load = self.wrk(window, self.seconds)
        self.polls = 0
        accepted = self.settled_journal() - journaled
        in_flight = self.samples()
        cpu_after = group_cpu(self.web.pid)
        receiver = {
            "deliveries_per_s": accepted / (load["duration_us"] / 1e6),
            "answered": load["requests"],
            "accepted": accepted,
            "p99_ms": load["latency_us"]["p99"] / 1000,
            "cpu_ms": (cpu_after[0] - cpu_before[0]) / accepted * 1000,
            "state": phase(before["state"], in_flight["state"], accepted, idle, self.polls),
        }
        if self.broker is not None:
            receiver["broker"] = phase(before["broker"], in_flight["broker"], accepted, idle)
        if accepted < load["requests"]:
            raise RuntimeError(f"only {accepted} of {load['requests']} answered were journaled")

        # The worker alone, on everything journaled (the warm-up's deliveries too).
        worker = self.drain(number, idle)
        after = self.samples()
        total = journaled + accepted
        memory = {
            "in_flight_bytes": (in_flight["state"]["used_memory"] - before["state"]["used_memory"])
            / accepted,
            "after_bytes": (after["state"]["used_memory"] - before["state"]["used_memory"]) / total,
        }
        return {"receiver": receiver, "worker": worker, "memory": memory}

    def samples(self) -> dict:
        out = {"state": redis_sample(self.state)}
        if self.broker is not None:
            out["broker"] = redis_sample(self.broker)
        return out

    def drain(self, number: int, idle: dict) -> dict:
        name = f"worker-{self.mode}-{number}"
        args = [sys.executable, "-m", "workers.run", "worker", "--concurrency=1"]
        worker = self.procs.spawn(name, [*args, "--loglevel=INFO"], self.env)
        start = self.state.zcard(JOURNAL)
        polls, first, deadline = 1, None, time.monotonic() + 120
        while True:
            size = self.state.zcard(JOURNAL)
            polls += 1
            if first is None and size < start:
                # the first delivery applied: start-up is over, the drain is on
                first = (size, self.samples(), group_cpu(worker.pid))
                polls = 0
            if size == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker stalled at {size} journaled ({name}.log)")
            time.sleep(0.02)
        last, cpu = self.samples(), group_cpu(worker.pid)
        self.procs.stop(name)
        count, begun, cpu_first = first
        out = {
            "deliveries_per_s": count / (last["state"]["at"] - begun["state"]["at"]),
            "applied": count,
            "cpu_ms": (cpu[0] - cpu_first[0]) / count * 1000,
            "main_cpu_ms": (cpu[1] - cpu_first[1]) / count * 1000,
            "state": phase(begun["state"], last["state"], count, idle, polls),
        }
        if self.broker is not None:
            out["broker"] = phase(begun["broker"], last["broker"], count, idle)
        return out


def table(mode: str, rounds: list[dict]) -> str:
    lines = [f"broker: {mode}" + (" (a second redis-server)" if mode == "separate" else "")]

    def row(label: str, values: list[float], fmt: str = "{:.0f}") -> None:
        lines.append(f"  {label:<46}" + "".join(f"{fmt.format(v):>10}" for v in values))

    def each(path: str) -> list[float]:
        out = []
        for r in rounds:
            value = r
            for part in path.split("."):
                value = value[part]
            out.append(value)
        return out

    row("receiver deliveries/s (1 gevent worker)", each("receiver.deliveries_per_s"))
    row("  its CPU per delivery (ms)", each("receiver.cpu_ms"), "{:.2f}")
    row("  p99 under wrk -c16 (ms)", each("receiver.p99_ms"), "{:.1f}")
    row("worker deliveries/s (--concurrency=1)", each("worker.deliveries_per_s"))
    row("  its CPU per delivery, main + child (ms)", each("worker.cpu_ms"), "{:.2f}")
    row("  of which the main process (ms)", each("worker.main_cpu_ms"), "{:.2f}")
    servers = ["state"] + (["broker"] if mode == "separate" else [])
    for server in servers:
        for side in ("receiver", "worker"):
            at = f"{side}.{server}"
            row(
                f"{server} Redis, {side}: round trips/delivery", each(f"{at}.round_trips"), "{:.2f}"
            )
            row(
                "  commands run (scripts' own included)",
                each(f"{at}.commands_per_delivery"),
                "{:.1f}",
            )
            row("  net in (B/delivery)", each(f"{at}.net_in_bytes"))
            row("  net out (B/delivery)", each(f"{at}.net_out_bytes"))
            row("  AOF (B/delivery)", each(f"{at}.aof_bytes"))
            row("  CPU, main thread (us/delivery)", each(f"{at}.cpu_main_us"), "{:.1f}")
            row("  CPU, process (us/delivery)", each(f"{at}.cpu_us"), "{:.1f}")
            row("  inside its scripts (us/delivery)", each(f"{at}.script_us"), "{:.1f}")
            figures = each(at)
            for name in sorted({c for f in figures for c in f["by_command"]}):
                row(f"    {name}", [f["by_command"].get(name, 0) for f in figures], "{:.2f}")
        receiver, worker = (
            each(f"receiver.{server}.cpu_main_us"),
            each(f"worker.{server}.cpu_main_us"),
        )
        total = [a + b for a, b in zip(receiver, worker, strict=True)]
        row(f"{server} Redis main-thread CPU per delivery (us)", total, "{:.1f}")
        row("  => one core saturated at (deliveries/s)", [1e6 / t for t in total])
    row("state Redis memory in flight (B/delivery)", each("memory.in_flight_bytes"))
    row("state Redis memory after (B/delivery, new job)", each("memory.after_bytes"))
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__)
    parser.add_argument("--broker", choices=("same", "separate", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=4, help="receiver window per round")
    options = parser.parse_args(argv)
    modes = ("same", "separate") if options.broker == "both" else (options.broker,)
    results, saved_env = {}, dict(os.environ)
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix="capacity-") as work:
            procs = Processes(Path(work))
            try:
                run = Capacity(mode, Path(work), procs, options.seconds)
                run.start()
                results[mode] = [run.round(n) for n in range(1, options.rounds + 1)]
            finally:
                procs.stop_all()
                os.environ.clear()
                os.environ.update(saved_env)
        print(table(mode, results[mode]), flush=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"written: {RESULTS.relative_to(ROOT)} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main(sys.argv[1:])

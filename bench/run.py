"""`make bench`: one run of every figure of issue 6, twice each; a table and
bench/results/latest.json.

Starts a private redis-server (production persistence settings), the receiver as the
Procfile runs it, the bare Flask ceiling under the same gunicorn command, and the
Celery worker as the Procfile runs it; stops all of them at the end, on an error
and on Ctrl-C. Ratios are taken within the run, never against absolute numbers:
the machine is shared and noisy.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench.common import (
    ROOT,
    Processes,
    free_port,
    http_ok,
    new_secret,
    pair,
    start_redis,
    wait_for,
)

RESULTS = ROOT / "bench" / "results" / "latest.json"
# Tuning variables left to their shipped defaults, whatever the caller's shell holds.
STRIPPED_ENV = (
    "WEB_CONCURRENCY",
    "WEB_THREADS",
    "WEB_WORKER_CLASS",
    "WEB_WORKER_CONNECTIONS",
    "WEB_HEADER_TIMEOUT_SECONDS",
    "WEB_BODY_TIMEOUT_SECONDS",
    "GUNICORN_CMD_ARGS",
    "CELERY_WORKER_CONCURRENCY",
    "GUNICORN_ACCESS_LOG",
    "PROMETHEUS_MULTIPROC_DIR",
    "RAW_RETENTION_SECONDS",
    "WEBHOOK_PROVIDERS_FILE",
    "LOG_FORMAT",
)
TARGETS = {
    "R": (">=", 0.60),
    "W": (">=", 0.80),
    "p99_200": ("<=", 50.0),
    "tick_ratio": ("<=", 2.0),
    "bytes_per_id": ("<=", 100.0),
}


class Bench:
    """The running system and what every measurement needs from it."""

    def __init__(self, work_dir: Path, procs: Processes) -> None:
        self.work_dir = work_dir
        self.procs = procs
        self.tag = uuid.uuid4().hex[:6]
        self.subscriber = None
        self.worker_name: str | None = None

    def start(self) -> None:
        self.redis_url, self.redis = start_redis(self.procs, self.work_dir / "redis")
        secret = new_secret()
        env = {k: v for k, v in os.environ.items() if k not in STRIPPED_ENV}
        env.update(
            REDIS_URL=self.redis_url,
            CELERY_BROKER_URL=self.redis_url,
            WEBHOOK_SECRET_REPLICATE=secret,
            RATE_LIMIT="1000000/second",
            LOG_LEVEL="INFO",
            WORKER_METRICS_PORT="0",
            ADMIN_TOKEN="bench-" + uuid.uuid4().hex,
        )
        self.env = env
        # This process publishes and registers with the product's own code: same settings.
        os.environ.clear()
        os.environ.update(env)

        from bench.common import BulkRegistrar, Signer
        from bench.subscriber import Subscriber
        from webhook_ingest.services import build_services

        self.signer = Signer(secret)
        services = build_services()
        self.registrar = BulkRegistrar(services.redis, services)

        gunicorn = [str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py"]
        self.web_host, self.web_port, bare_port = "127.0.0.1", free_port(), free_port()
        self.procs.spawn(
            "web", [*gunicorn, "webhook_ingest.wsgi:app"], {**env, "PORT": str(self.web_port)}
        )
        self.procs.spawn("bare", [*gunicorn, "bench.bare_app:app"], {**env, "PORT": str(bare_port)})
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        self.bare_url = f"http://127.0.0.1:{bare_port}"
        wait_for(lambda: http_ok(f"{self.web_url}/readyz"), 60, "the receiver (web.log)")
        wait_for(lambda: http_ok(f"{self.bare_url}/healthz"), 60, "the bare app (bare.log)")
        self.subscriber = Subscriber(self.redis_url)

    def stop_service(self) -> None:
        for name in (self.worker_name, "web", "bare"):
            if name:
                self.procs.stop(name)
        self.worker_name = None

    def close(self) -> None:
        if self.subscriber is not None:
            self.subscriber.close()


def main() -> int:
    began = time.monotonic()
    work_dir = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    procs = Processes(work_dir)
    # Explicitly: a shell's background job inherits SIGINT ignored, and Ctrl-C must
    # still stop everything this run started (the finally below).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    bench = Bench(work_dir, procs)
    keep = os.environ.get("BENCH_KEEP") == "1"
    try:
        machine = describe_machine()
        bench.start()
        print(f"bench: private Redis {bench.redis_url}, logs in {work_dir}", flush=True)
        raw = measure_all(bench)
        machine["load_average_end"] = os.getloadavg()
        raw["seconds_total"] = time.monotonic() - began
        report = build_report(machine, raw)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
        print_table(report)
        print(f"\nwritten {RESULTS.relative_to(ROOT)}; total {raw['seconds_total']:.0f} s")
        return 0
    except KeyboardInterrupt:
        print("bench: interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        bench.close()
        procs.stop_all()
        if keep:
            print(f"bench: logs kept in {work_dir}", file=sys.stderr)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


def measure_all(bench: Bench) -> dict:
    from bench import growth, latency, receiver, replica_acks, worker

    raw: dict = {"phases": {}}

    def phase(name: str, fn, *args):
        print(f"bench: {name} ...", end=" ", flush=True)
        started = time.monotonic()
        value = fn(*args)
        raw["phases"][name] = round(time.monotonic() - started, 1)
        print(f"{raw['phases'][name]} s: {_brief(value)}", flush=True)
        return value

    raw["receiver"] = [phase(f"R run {n}", receiver.measure, bench, n) for n in (1, 2)]
    raw["worker"] = [phase(f"W run {n}", worker.measure, bench, n) for n in (1, 2)]
    # The worker of W run 2 keeps running: the latency steps need the whole pipeline.
    search = phase("latency: highest sustained rate", latency.search_max, bench)
    raw["latency_search"] = search
    top = search["max_rate"]
    rates = [("100", 100), ("200", 200)] + ([("max", top)] if top else [])
    runs = []
    for n in (1, 2):
        run = {}
        for label, rate in rates:
            run[label] = phase(
                f"latency run {n} at {rate}/s",
                latency.step,
                bench,
                rate,
                8,
                f"l{n}{label}-{bench.tag}",
                label == "200",
            )
            time.sleep(0.5)
        runs.append(run)
    raw["latency"] = runs
    bench.stop_service()
    bench.close()
    bench.subscriber = None
    raw["growth"] = [phase(f"growth run {n}", growth.measure, bench, n) for n in (1, 2)]
    # last: the replica it attaches must not weigh on any other figure
    raw["replica_acks"] = [
        phase(f"replica acks run {n}", replica_acks.measure, bench) for n in (1, 2)
    ]
    return raw


def _brief(value: dict) -> str:
    """A line of progress per phase, so a long run shows where it is."""
    if "bare" in value:
        return (
            f"R {value['ratio']:.2f} ({value['product']['rps']:.0f} / {value['bare']['rps']:.0f})"
        )
    if "worker_rate" in value:
        worker, plain = value["worker_rate"], value["plain_rate"]
        return f"W {value['ratio']:.2f} ({worker:.0f} / {plain:.0f} per s)"
    if "max_rate" in value:
        return f"max {value['max_rate']}/s, steps {value['steps']}"
    if "latency_ms" in value:
        lat = value["latency_ms"]
        return f"p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} ms, sustained {value['sustained']}"
    if "min1" in value:
        min0, min1 = value["min0"], value["min1"]
        return (
            f"MIN=1/MIN=0 {value['ratio']:.2f} ({min1['rps']:.0f} / {min0['rps']:.0f} req/s, "
            f"p50 {min1['latency_p50_ms']:.1f} / {min0['latency_p50_ms']:.1f} ms)"
        )
    if "tick_ratio" in value:
        return f"tick ratio {value['tick_ratio']:.2f}"
    return ""


# -- report ---------------------------------------------------------------------


def describe_machine() -> dict:
    import celery
    import gunicorn
    import kombu
    import redis

    def version(args: list[str]) -> str:
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
            return (done.stdout or done.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "unknown"

    return {
        "date": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis_server": version(["redis-server", "--version"]),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "flask": _dist("flask"),
        "gunicorn": gunicorn.__version__,
        "wrk": version(["wrk", "--version"]),
        "load_average_start": os.getloadavg(),
    }


def _dist(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _met(key: str, values: list[float | None]) -> str:
    op, bound = TARGETS[key]
    checks = [(v >= bound if op == ">=" else v <= bound) for v in values if v is not None]
    if not checks:
        return "n/a"
    if all(checks):
        return "yes"
    return "no" if not any(checks) else "mixed"


def build_report(machine: dict, raw: dict) -> dict:
    rec, wrk, lat, gro = raw["receiver"], raw["worker"], raw["latency"], raw["growth"]
    acks = raw["replica_acks"]
    figures: dict[str, dict] = {}

    def figure(name, unit, values, target=None):
        entry = {**pair(*values), "unit": unit}
        if target:
            op, bound = TARGETS[target]
            entry["target"] = f"{op} {bound:g}"
            entry["met"] = _met(target, list(values))
        figures[name] = entry

    figure("R receiver ratio", "x", [r["ratio"] for r in rec], "R")
    figure("receiver req/s", "req/s", [r["product"]["rps"] for r in rec])
    figure("bare Flask req/s", "req/s", [r["bare"]["rps"] for r in rec])
    figure("W worker ratio", "x", [w["ratio"] for w in wrk], "W")
    figure("worker deliveries/s", "1/s", [w["worker_rate"] for w in wrk])
    figure("plain loop deliveries/s", "1/s", [w["plain_rate"] for w in wrk])
    for label, name in (("100", "100/s"), ("200", "200/s"), ("max", "max")):
        for q in ("p50", "p95", "p99"):
            target = "p99_200" if (label, q) == ("200", "p99") else None
            values = [run[label]["latency_ms"][q] if label in run else None for run in lat]
            figure(f"latency {q} @{name}", "ms", values, target)
    for label, name in (("200", "200/s"), ("max", "max")):
        values = [run[label]["achieved_rate"] if label in run else None for run in lat]
        figure(f"achieved rate @{name}", "1/s", values)
    for q in ("p50", "p99"):
        values = [run["200"]["publish_to_subscriber_ms"][q] for run in lat]
        figure(f"publish->subscriber {q}", "ms", values)
    for size in ("1000", "10000", "100000"):
        figure(f"tick ms @{size}", "ms", [g["ticks"][size]["seconds_median"] * 1000 for g in gro])
        figure(f"tick cmds @{size}", "cmds", [g["ticks"][size]["commands_median"] for g in gro])
        figure(
            f"tick Redis us @{size}", "us", [g["ticks"][size]["server_usec_median"] for g in gro]
        )
    figure("tick(100k)/tick(1k)", "x", [g["tick_ratio"] for g in gro], "tick_ratio")
    figure("bytes per tracked job", "B", [g["bytes_per_tracked_job"] for g in gro])
    figure("bytes per delivery id", "B", [g["bytes_per_delivery_id"] for g in gro], "bytes_per_id")
    figure("  of which claim key", "B", [g["bytes_per_delivery_claim"] for g in gro])
    figure("  of which applied record", "B", [g["bytes_per_applied_record"] for g in gro])
    # the job's event trace: per job, at most 20 entries however many deliveries
    figure("bytes per job event (<= 20 a job)", "B", [g["bytes_per_job_event"] for g in gro])
    for mix, name in (("all_openai", "all OpenAI"), ("replicate_heavy", "Replicate-heavy")):
        figure(f"ids @100/s, a day, {name}", "MB", [g[f"mb_ids_day_{mix}"] for g in gro])
        figure(f"ids @100/s, steady, {name}", "MB", [g[f"mb_ids_steady_{mix}"] for g in gro])
    figure(
        "bytes per in-flight delivery (journal)",
        "B",
        [g["bytes_per_in_flight_delivery"] for g in gro],
    )
    figure("  of which the body", "B", [g["in_flight_body_bytes"] for g in gro])
    # REDIS_MIN_REPLICA_ACKS, against a master with one local replica (bench.replica_acks)
    figure("receiver req/s, MIN_ACKS=0", "req/s", [a["min0"]["rps"] for a in acks])
    figure("receiver req/s, MIN_ACKS=1", "req/s", [a["min1"]["rps"] for a in acks])
    figure("MIN_ACKS=1 / MIN_ACKS=0", "x", [a["ratio"] for a in acks])
    for side in ("min0", "min1"):
        for q in ("p50", "p99"):
            values = [a[side][f"latency_{q}_ms"] for a in acks]
            figure(f"latency {q}, MIN_ACKS={side[-1]}", "ms", values)

    warnings = []
    for n, r in enumerate(rec, 1):
        warnings += [f"R run {n}: {p}" for p in r["problems"]]
    for n, a in enumerate(acks, 1):
        warnings += [f"replica acks run {n}: {p}" for p in a["problems"]]
    for n, run in enumerate(lat, 1):
        for label, step in run.items():
            if step["generator_behind"]:
                lag, answers = step["send_lag_ms"]["p99"], step["answer_ms"]["p99"]
                cause = (
                    "every sender was waiting on the receiver (its backlog)"
                    if step["senders_saturated"]
                    else "the generator itself"
                )
                warnings.append(
                    f"latency run {n} @{label}: sends started late (p99 {lag:.0f} ms, "
                    f"answers p99 {answers:.0f} ms): {cause}"
                )
            if step["missing"] or step["not_accepted"]:
                warnings.append(
                    f"latency run {n} @{label}: {step['not_accepted']} not accepted, "
                    f"{step['missing']} not broadcast within the settle time"
                )
    return {
        "machine": machine,
        "max_sustained_rate": raw["latency_search"]["max_rate"],
        "figures": figures,
        "warnings": warnings,
        "seconds_total": raw["seconds_total"],
        "raw": raw,
    }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}"
    if unit == "ms":
        return f"{value:.1f}" if value < 100 else f"{value:.0f}"
    return f"{value:.0f}"


def print_table(report: dict) -> None:
    machine = report["machine"]
    print(
        f"\nwebhook-ingest bench, {machine['date']}, {machine['cores']} cores, "
        f"Python {machine['python']}, Celery {machine['celery']}, {machine['redis_server']}"
    )
    print(f"highest sustained open-loop rate: {report['max_sustained_rate']}/s")
    header = f"{'figure':28} {'run1':>9} {'run2':>9} {'spread':>7}  {'target':>8}  met?"
    print(header)
    print("-" * len(header))
    for name, f in report["figures"].items():
        spread = "-" if f["spread"] is None else f"{f['spread'] * 100:.0f}%"
        unit = f["unit"]
        print(
            f"{name + ' (' + unit + ')' if unit not in ('x',) else name:28} "
            f"{_fmt(f['run1'], unit):>9} {_fmt(f['run2'], unit):>9} {spread:>7}  "
            f"{f.get('target', ''):>8}  {f.get('met', '')}"
        )
    for warning in report["warnings"]:
        print(f"warning: {warning}")


if __name__ == "__main__":
    sys.exit(main())

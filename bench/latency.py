"""Latency: scheduled send -> the job's broadcast on `job_updates`, at fixed open-loop rates.

An open-loop generator: request i of a step is due at t0 + i / rate whatever
happened to the ones before it, and its latency is counted from that due time, so
a slow answer delays nothing else unnoticed (no coordinated omission). Sender
threads with keep-alive `http.client` connections take the next due request when
free; how late they started sending (`send_lag`) says whether the generator kept up.
Deliveries are pre-signed and their jobs registered before the step starts.
"""

from __future__ import annotations

import http.client
import itertools
import threading
import time

import redis

from bench.common import PROVIDER, QUEUE, percentile, prediction_body
from bench.subscriber import PROBE_CHANNEL

# Enough that the senders are rarely all waiting on answers (320 senders: 1000 req/s
# answered in 300 ms each): a receiver that falls behind gets its backlog, not a
# politely slower generator. When they are all waiting anyway, the step says so.
SENDERS = 320
SETTLE_SECONDS = 10.0  # after the last send, the longest wait for the stragglers' broadcasts
PROBES_PER_SECOND = 100
# Search for the highest rate: 3 s steps from 200/s, up until one breaks, or down
# until one holds.
SEARCH_START = 200
SEARCH_UP = (250, 325, 400, 500, 650, 800, 1000, 1250, 1600)
SEARCH_DOWN = (160, 130, 100)
SEARCH_SECONDS = 3
SEARCH_BUDGET_SECONDS = 45
# A step is "sustained" when the generator kept up, every delivery was accepted
# (202) and broadcast within SETTLE_SECONDS, and its p99 stayed under this:
SUSTAINED_P99_MS = 50  # the issue-16 target: the highest rate that holds p99 <= 50 ms


def prepare(bench, tag: str, count: int) -> list[tuple[str, dict[str, str], str]]:
    jobs = [(f"job-{tag}-{n}", f"pred-{tag}-{n}") for n in range(count)]
    bench.registrar.register(jobs)
    items = [(f"msg_{tag}-{n}", prediction_body(ext)) for n, (_, ext) in enumerate(jobs)]
    out = []
    for (job_id, _), (msg_id, stamp, signature, body) in zip(
        jobs, bench.signer.sign_batch(items), strict=True
    ):
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": stamp,
            "webhook-signature": signature,
        }
        out.append((f"/webhook/{PROVIDER}/{job_id}", headers, body))
    return out


def step(bench, rate: float, seconds: float, tag: str, probe: bool = False) -> dict:
    """Send rate * seconds deliveries on schedule; measure each until its broadcast."""
    count = int(rate * seconds)
    requests = prepare(bench, tag, count)
    job_ids = [path.rsplit("/", 1)[1] for path, _, _ in requests]
    sends: list[tuple[float, float, int] | None] = [None] * count  # (start, answered, status)
    counter = itertools.count()
    host, port = bench.web_host, bench.web_port
    bench.subscriber.reset()
    start = time.monotonic() + 0.3  # every sender ready before the first is due
    stop_probe = threading.Event()

    def sender() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        while True:
            index = next(counter)
            if index >= count:
                break
            due = start + index / rate
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            path, headers, body = requests[index]
            began = time.monotonic()
            try:
                conn.request("POST", path, body=body, headers=headers)
                answer = conn.getresponse()
                answer.read()
                status = answer.status
            except (OSError, http.client.HTTPException):
                conn.close()
                status = -1
            sends[index] = (began, time.monotonic(), status)
        conn.close()

    def prober() -> None:
        client = redis.Redis.from_url(bench.redis_url)
        due = start
        while not stop_probe.is_set():
            due += 1 / PROBES_PER_SECOND
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            client.publish(PROBE_CHANNEL, repr(time.monotonic()))
        client.close()

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(SENDERS)]
    if probe:
        threads.append(threading.Thread(target=prober, daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads[:SENDERS]:
        thread.join()
    last_send = time.monotonic()
    stop_probe.set()
    for thread in threads[SENDERS:]:
        thread.join()

    wanted = set(job_ids)
    deadline = last_send + SETTLE_SECONDS
    while time.monotonic() < deadline:
        bench.subscriber.poll()
        if wanted.issubset(bench.subscriber.arrivals):
            break
        time.sleep(0.05)
    bench.subscriber.poll()
    arrivals = bench.subscriber.arrivals
    # the next step starts on an empty queue, not on this one's backlog
    while bench.redis.llen(QUEUE) and time.monotonic() < deadline:
        time.sleep(0.05)

    latencies, lags, answers, missing, not_accepted = [], [], [], 0, 0
    for index, job_id in enumerate(job_ids):
        due = start + index / rate
        began, answered, status = sends[index]
        lags.append(began - due)
        answers.append(answered - began)
        if status != 202:
            not_accepted += 1
        if job_id in arrivals:
            latencies.append(arrivals[job_id] - due)
        else:
            missing += 1
    last_began = max(s[0] for s in sends)
    achieved = (count - 1) / (last_began - start) if count > 1 else rate
    answer_p99 = percentile(answers, 99) or 0.0
    result = {
        "rate": rate,
        "seconds": seconds,
        "sent": count,
        "achieved_rate": achieved,
        "not_accepted": not_accepted,
        "missing": missing,
        "latency_ms": _summary(latencies),
        "answer_ms": _summary(answers),
        "send_lag_ms": _summary(lags),
        "generator_behind": achieved < 0.97 * rate or _ms(percentile(lags, 99)) > 20,
        # every sender was waiting on an answer: the lag is the receiver's backlog
        "senders_saturated": answer_p99 * rate > 0.8 * SENDERS,
    }
    if probe:
        result["publish_to_subscriber_ms"] = _summary(bench.subscriber.probes)
    p99 = result["latency_ms"]["p99"]
    result["sustained"] = (
        not result["generator_behind"]
        and not not_accepted
        and not missing
        and p99 is not None
        and p99 <= SUSTAINED_P99_MS
    )
    return result


def search_max(bench) -> dict:
    """The highest rate the box sustains, in 3 s steps from SEARCH_START, time-bounded."""
    started = time.monotonic()
    steps = []

    def attempt(n: int, rate: int) -> bool:
        result = step(bench, rate, SEARCH_SECONDS, f"s{n}-{bench.tag}")
        steps.append(_brief(result))
        time.sleep(0.5)
        return result["sustained"]

    best = None
    if attempt(0, SEARCH_START):
        best = SEARCH_START
        for n, rate in enumerate(SEARCH_UP, 1):
            if time.monotonic() - started > SEARCH_BUDGET_SECONDS or not attempt(n, rate):
                break
            best = rate
    else:
        for n, rate in enumerate(SEARCH_DOWN, 1):
            if time.monotonic() - started > SEARCH_BUDGET_SECONDS:
                break
            if attempt(n, rate):
                best = rate
                break
    return {"max_rate": best, "steps": steps, "seconds": time.monotonic() - started}


def _ms(seconds: float | None) -> float:
    return 0.0 if seconds is None else seconds * 1000


def _summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": _ms(percentile(values, 50)) if values else None,
        "p95": _ms(percentile(values, 95)) if values else None,
        "p99": _ms(percentile(values, 99)) if values else None,
        "max": _ms(max(values)) if values else None,
    }


def _brief(result: dict) -> dict:
    keys = ("rate", "achieved_rate", "not_accepted", "missing", "sustained", "generator_behind")
    return {**{k: result[k] for k in keys}, "p99_ms": result["latency_ms"]["p99"]}

"""Helpers for the order, beat and soak fault tests (tests/faults/test_faults_{order,beat,soak}.py).

On top of tests/faults/fault_harness.py: Replicate event sequences per job with the final
state each implies, a sender that records what the receiver said (accepted,
duplicate, in flight), a pub/sub collector that reads every broadcast for the
whole run, and a census of the keys a Redis holds and their TTLs.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import redis
import requests

from tests.faults.fault_harness import Delivery, FaultRedis, System, prediction
from webhook_ingest.state import keys

TERMINALS = ("succeeded", "failed", "canceled")


def tqdm_logs(progress_steps: list[int], total: int = 100) -> str:
    """Cumulative logs as Replicate sends them, one tqdm line per step (last one counts)."""
    lines = ["Loading model..."]
    for pct in progress_steps:
        bar = "█" * (pct // 10) + " " * (10 - pct // 10)
        lines.append(f"{pct:3d}%|{bar}| {pct * total // 100}/{total} [00:01<00:09, 9.9it/s]")
    return "\n".join(lines)


@dataclass
class JobPlan:
    """One job's events in the order a provider produced them, and what they imply."""

    job_id: str
    external_id: str
    terminal: str  # the Replicate terminal status
    deliveries: list[Delivery]

    @property
    def expected(self) -> dict[str, object]:
        """The job_state fields the terminal event implies (whatever the arrival order)."""
        if self.terminal == "succeeded":
            return {
                "status": "completed",
                "progress": "100",
                "result": json.dumps([f"https://example.invalid/{self.external_id}.png"]),
                "error_message": None,
            }
        return {
            "status": "failed",
            "result": None,
            "error_message": "the model raised" if self.terminal == "failed" else "canceled",
        }


def plan_job(
    rng: random.Random, job_id: str, external_id: str, steps: int, terminal: str | None = None
) -> JobPlan:
    """starting -> `steps` processing events with rising tqdm progress -> terminal."""
    terminal = terminal or rng.choice(TERMINALS)
    progress = sorted(rng.sample(range(1, 100), steps))
    events = [prediction(external_id, "starting")]
    for n in range(1, steps + 1):
        events.append(prediction(external_id, "processing", tqdm_logs(progress[:n])))
    events.append(prediction(external_id, terminal, tqdm_logs(progress)))
    deliveries = [
        Delivery(job_id, external_id, f"msg_{uuid.uuid4().hex}", payload) for payload in events
    ]
    return JobPlan(job_id, external_id, terminal, deliveries)


def with_duplicates(
    rng: random.Random, deliveries: list[Delivery], share: float, most: int = 2
) -> list[Delivery]:
    """Each delivery once, and a `share` of them resent 1..`most` more times (same
    webhook-id, freshly signed, as a provider's retry), all in a random order."""
    sends = list(deliveries)
    for delivery in deliveries:
        if rng.random() < share:
            sends.extend([delivery] * rng.randint(1, most))
    rng.shuffle(sends)
    return sends


# -- sending --------------------------------------------------------------------


@dataclass
class Answers:
    """What the receiver said to every send, by kind."""

    by_status: Counter = field(default_factory=Counter)
    duplicate_flags: int = 0  # 200 {"received": true, "duplicate": true}
    lock: threading.Lock = field(default_factory=threading.Lock)

    def line(self) -> dict[str, int]:
        return {
            "accepted_202": self.by_status[202],
            "duplicate_200": self.duplicate_flags,
            "in_flight_409": self.by_status[409],
            "other": sum(n for s, n in self.by_status.items() if s not in (200, 202, 409)),
        }


def send_recorded(
    session: requests.Session, base_url: str, delivery: Delivery, answers: Answers
) -> int:
    """One signed send of `delivery`; its standing as fault_harness.send keeps it."""
    path, body, headers = delivery.request()
    duplicate = False
    try:
        reply = session.post(f"{base_url}{path}", data=body, headers=headers, timeout=10)
        status = reply.status_code
        if status == 200:
            duplicate = bool(reply.json().get("duplicate"))
    except requests.RequestException:
        status = 0
    delivery.answers.append(status)
    if delivery.status is None or not delivery.acknowledged:
        delivery.status = status
    with answers.lock:
        answers.by_status[status] += 1
        answers.duplicate_flags += duplicate
    return status


def send_all(
    system: System,
    sends: list[Delivery],
    answers: Answers,
    threads: int = 8,
    rate: float | None = None,
    on_progress=None,
) -> float:
    """Sends in list order from `threads` threads (each its own keep-alive session),
    at `rate` per second if given, else as fast as they go. Returns the seconds taken."""
    cursor = iter(enumerate(sends))
    lock = threading.Lock()
    started = time.monotonic()

    def run() -> None:
        session = requests.Session()
        while True:
            with lock:
                taken = next(cursor, None)
            if taken is None:
                break
            index, delivery = taken
            if rate:
                pause = started + index / rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            send_recorded(session, system.url, delivery, answers)
            if on_progress:
                on_progress(index)
        session.close()

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(900)
    assert not any(w.is_alive() for w in workers), "the senders did not finish"
    return time.monotonic() - started


def resend_unacknowledged(
    system: System, deliveries: list[Delivery], answers: Answers, rounds: int = 10
) -> int:
    """A provider retries every delivery that got no 2xx (a 409 says: retry later)."""
    resent = 0
    session = requests.Session()
    for _ in range(rounds):
        pending = [d for d in deliveries if not d.acknowledged]
        if not pending:
            break
        time.sleep(1)  # the 409's Retry-After
        for delivery in pending:
            send_recorded(session, system.url, delivery, answers)
            resent += 1
    session.close()
    return resent


# -- broadcasts -----------------------------------------------------------------


class Broadcasts:
    """Every message on `job_updates` and `job_progress:*`, read by a thread for the
    whole run (so the server's pub/sub output buffer never fills), in the order
    Redis published them."""

    def __init__(self, store: FaultRedis) -> None:
        self._client = store.client()
        self._pubsub = self._client.pubsub()
        self._pubsub.subscribe(keys.UPDATES_CHANNEL)
        self._pubsub.psubscribe(keys.progress_channel("*"))
        self.updates: dict[str, list[dict]] = defaultdict(list)
        self.progress: dict[str, list[dict]] = defaultdict(list)
        self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.last_at = time.monotonic()

    def start(self) -> Broadcasts:
        # the subscriptions are confirmed before anything is sent
        confirmed = 0
        deadline = time.monotonic() + 5
        while confirmed < 2 and time.monotonic() < deadline:
            message = self._pubsub.get_message(timeout=0.1)
            if message and message["type"] in ("subscribe", "psubscribe"):
                confirmed += 1
        assert confirmed == 2, "pub/sub subscriptions not confirmed"
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if not message or message["type"] not in ("message", "pmessage"):
                continue
            data = json.loads(message["data"])
            channel = message["channel"]
            if channel == keys.UPDATES_CHANNEL:
                self.updates[data["job_id"]].append(data)
            else:
                assert channel == keys.progress_channel(data["job_id"]), (channel, data)
                self.progress[data["job_id"]].append(data)
            self.total += 1
            self.last_at = time.monotonic()

    def settle(self, quiet: float = 1.5, timeout: float = 30) -> None:
        """Waits until nothing was published for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() - self.last_at < quiet and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()


# -- Redis after a run ----------------------------------------------------------


def key_census(client: redis.Redis) -> dict[str, dict[str, int]]:
    """Per key family (the name up to its last variable part): how many keys, how
    many with a TTL, how many without."""
    families: dict[str, dict[str, int]] = defaultdict(lambda: {"keys": 0, "ttl": 0, "no_ttl": 0})
    names = list(client.scan_iter(count=5000))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.ttl(name)
    for name, ttl in zip(names, pipe.execute(), strict=True):
        if ttl == -2:  # expired between the SCAN and the TTL (a 1-s rate-limit window)
            continue
        family = family_of(name)
        families[family]["keys"] += 1
        families[family]["ttl" if ttl >= 0 else "no_ttl"] += 1
    return dict(families)


def family_of(name: str) -> str:
    for prefix in (
        "job_state:",
        "job_mapping:",
        "webhook_ingest:applied:",
        "webhook_ingest:seen:",
        "webhook_ingest:job_events:",
        "webhook_ingest:external:",
        "webhook_ingest:delivery:",
        "webhook_ingest:dead_letter:",
        "webhook_ingest:raw_delivery:",
        # RedBeat's schedule, its entries and its lock: the prefix is
        # celeryconfig's redbeat_key_prefix, and an entry's name follows it
        # without a separator (webhook_ingest:redbeatpoll-orphans)
        "webhook_ingest:redbeat",
        "_kombu.binding.",
    ):
        if name.startswith(prefix):
            return prefix + "*"
    return name


def wait_queue_empty(client: redis.Redis, queue: str = "webhook_ingest", timeout: float = 120):
    """The broker queue drained and nothing unacknowledged (kombu's Redis transport)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.llen(queue) == 0 and client.zcard("unacked_index") == 0:
            return True
        time.sleep(0.25)
    return False

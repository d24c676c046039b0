"""A subscriber in a process of its own: when each job's broadcast arrived.

Its own process so the load generator's threads do not delay it (and so it is a
subscriber as another service would run one). Times are `time.monotonic()`, which
on Linux is CLOCK_MONOTONIC, one clock for every process of the machine, so the
generator's scheduled send times and these arrival times compare directly.
"""

from __future__ import annotations

import json
import multiprocessing
import time

PROBE_CHANNEL = "bench:probe"


def _serve(redis_url: str, conn) -> None:
    import signal

    import redis

    # Ctrl-C reaches the whole process group: the harness stops this one itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    from webhook_ingest.state.keys import UPDATES_CHANNEL

    pubsub.subscribe(UPDATES_CHANNEL, PROBE_CHANNEL)
    while not pubsub.subscribed:
        pubsub.get_message(timeout=0.05)
    pubsub.get_message(timeout=0.2)  # the second confirmation
    conn.send("ready")
    arrivals: dict[str, float] = {}  # job id -> first broadcast
    probes: list[float] = []  # publish -> here, seconds
    broadcasts = 0
    while True:
        message = pubsub.get_message(timeout=0.02)
        while message is not None:
            now = time.monotonic()
            if message["channel"] == PROBE_CHANNEL.encode():
                probes.append(now - float(message["data"]))
            else:
                broadcasts += 1
                job_id = json.loads(message["data"])["job_id"]
                arrivals.setdefault(job_id, now)
            message = pubsub.get_message(timeout=0)
        if conn.poll():
            command = conn.recv()
            if command == "stop":
                return
            conn.send({"arrivals": arrivals, "probes": probes, "broadcasts": broadcasts})
            arrivals, probes, broadcasts = {}, [], 0


class Subscriber:
    """What arrived is pulled over with `poll()` into `arrivals` and `probes`; `reset()`
    forgets it between measurements."""

    def __init__(self, redis_url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(redis_url, child), daemon=True)
        self._process.start()
        if not self._conn.poll(30):
            raise RuntimeError("the subscriber did not start")
        self._conn.recv()
        self.reset()

    def reset(self) -> None:
        self.poll()
        self.arrivals: dict[str, float] = {}
        self.probes: list[float] = []
        self.broadcasts = 0

    def poll(self) -> None:
        self._conn.send("collect")
        got = self._conn.recv()
        if hasattr(self, "arrivals"):
            for job_id, at in got["arrivals"].items():
                self.arrivals.setdefault(job_id, at)
            self.probes.extend(got["probes"])
            self.broadcasts += got["broadcasts"]

    def close(self) -> None:
        try:
            self._conn.send("stop")
        except OSError:
            pass
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)

"""`python -m bench.worker_variant PATCHES [celery worker options]`: the worker with
a candidate change applied (bench/worker_options.py), for measuring it before it is
shipped. PATCHES is a comma-separated list of names below ('' for none); Celery then
runs in this process, so prefork children inherit the patch.
"""

from __future__ import annotations

import sys


def no_is_open() -> None:
    """The worker without its `HEXISTS` pre-check of the journal record."""
    from webhook_ingest.handoff.journal import Journal

    Journal.is_open = lambda self, delivery: True


def acks_immediate() -> None:
    """kombu's own bookkeeping: the removal of an acknowledged message's record in
    a round trip of its own (workers/kombu_redis.py before issue 16)."""
    from kombu.transport import redis as kombu_redis

    from workers import kombu_redis as ours

    ours.Transport.register_with_event_loop = kombu_redis.Transport.register_with_event_loop


def no_multi() -> None:
    """The transport's bookkeeping pipelines without MULTI/EXEC around them."""
    from contextlib import contextmanager

    from workers import kombu_redis as ours

    @contextmanager
    def pipe_or_acquire(self, pipe=None, client=None):
        if pipe:
            yield pipe
        else:
            with self.channel.conn_or_acquire(client) as client:
                yield client.pipeline(transaction=False)

    ours.QoS.pipe_or_acquire = pipe_or_acquire


PATCHES = {"no_is_open": no_is_open, "acks_immediate": acks_immediate, "no_multi": no_multi}


def main(names: str, argv: list[str]) -> None:
    for name in filter(None, names.split(",")):
        PATCHES[name]()
    from celery.__main__ import main as celery_main

    sys.argv = ["celery", "-A", "workers", "worker", *argv]
    celery_main()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

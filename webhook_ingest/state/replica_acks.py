"""REDIS_MIN_REPLICA_ACKS: no 2xx, and no task acknowledged, before replicas hold the write.

Redis replicates asynchronously: a master lost right after a write may be
replaced by a replica that never got it. With REDIS_MIN_REPLICA_ACKS=n (n > 0)
the receiver answers 2xx, and a worker lets Celery acknowledge a task, only
after Redis WAIT says n replicas acknowledged the write; otherwise the receiver
answers 503 (the provider retries) and the worker retries the task.

How the WAIT is made to cover the write. WAIT blocks until replicas have
acknowledged the replication offset of the *calling connection's* last write.
redis-py hands each command a connection from a pool, so a WAIT sent on its own
may go out on a connection that wrote something else, or nothing. So every WAIT
here goes out in one pipeline (one connection, one round trip) after a write of
its own: `SET REPLICA_ACK_MARK ... PX`. The replication stream is one ordered
log, so a replica that acknowledged the mark holds every write the master made
before it: the script it follows in the same pipeline, and also a claim another
receiver wrote (the provider's retry answered as a duplicate), or an apply made
on another connection of the worker's pool. A duplicate writes nothing itself;
without the mark its WAIT would count whatever that pooled connection wrote last.

REDIS_MIN_REPLICA_ACKS=0 (the default) sends no WAIT and no mark: the scripts run
exactly as before. What WAIT does not promise (a failover may still pick a replica
that missed the write): docs/operations.md, "Replica acknowledgement".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis
from redis.commands.core import Script

from webhook_ingest.observability.metrics import REPLICA_ACK_TIMEOUTS
from webhook_ingest.state import keys

log = logging.getLogger(__name__)


class ReplicasBehind(redis.RedisError):
    """Fewer replicas than REDIS_MIN_REPLICA_ACKS confirmed the write in time.

    A RedisError: for whoever cannot tell, it is the state store not (yet) able
    to keep the promise, like any other Redis failure (a worker's task retries)."""

    def __init__(self, acked: int, wanted: int, timeout_ms: int) -> None:
        super().__init__(
            f"{acked} of {wanted} replicas acknowledged the write within {timeout_ms} ms"
        )
        self.acked = acked
        self.wanted = wanted


class ReplicaAcks:
    """WAIT for `wanted` replicas after a write, at most `timeout_ms`; `process`
    (receiver, worker) labels the shortfall metric."""

    def __init__(self, client: redis.Redis, wanted: int, timeout_ms: int, process: str) -> None:
        self._redis = client
        self.wanted = wanted
        self.timeout_ms = timeout_ms
        self._process = process

    @property
    def enabled(self) -> bool:
        return self.wanted > 0

    def run_script(
        self, script: Script, keys_: Sequence[Any], args: Sequence[Any]
    ) -> tuple[Any, int | None]:
        """(the script's reply, replicas that acknowledged it), the WAIT in the same
        round trip; (reply, None) without a WAIT when disabled. The caller decides
        what the reply means, then calls `require` with the count."""
        if not self.enabled:
            return script(keys=keys_, args=args), None
        try:
            return self._script_and_wait(script, keys_, args)
        except redis.exceptions.NoScriptError:
            # A restarted or new master does not know the script yet; nothing ran.
            self._redis.script_load(script.script)
            return self._script_and_wait(script, keys_, args)

    def _script_and_wait(
        self, script: Script, keys_: Sequence[Any], args: Sequence[Any]
    ) -> tuple[Any, int]:
        # EVALSHA itself, not Script(client=pipe): a pipeline holding Scripts asks
        # SCRIPT EXISTS first, one more round trip per delivery.
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.evalsha(script.sha, len(keys_), *keys_, *args)
            self._mark_and_wait(pipe)
            reply, _, acked = pipe.execute()

        return reply, acked

    def confirm(self) -> None:
        """Raise ReplicasBehind unless `wanted` replicas hold every write the master
        made so far (this process's included); nothing when disabled."""
        if not self.enabled:
            return
        with self._redis.pipeline(transaction=False) as pipe:
            self._mark_and_wait(pipe)
            _, acked = pipe.execute()
        self.require(acked)

    def require(self, acked: int | None) -> None:
        """Raise ReplicasBehind (counted and logged) if `acked` falls short."""
        if acked is None or acked >= self.wanted:
            return
        REPLICA_ACK_TIMEOUTS.labels(self._process).inc()
        log.warning(
            "replica acknowledgement short: %d of %d replicas within %d ms",
            acked,
            self.wanted,
            self.timeout_ms,
            extra={
                "replica_ack_process": self._process,
                "replicas_acked": acked,
                "replicas_wanted": self.wanted,
            },
        )
        raise ReplicasBehind(acked, self.wanted, self.timeout_ms)

    def _mark_and_wait(self, pipe: redis.client.Pipeline) -> None:
        pipe.set(keys.REPLICA_ACK_MARK, "1", px=keys.REPLICA_ACK_MARK_TTL_MS)
        pipe.wait(self.wanted, self.timeout_ms)

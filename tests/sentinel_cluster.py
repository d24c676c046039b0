"""A Redis Sentinel deployment of the test's own on loopback: one master, replicas,
sentinels, every one a real redis-server process (`redis-server <conf> --sentinel`
is what Debian's redis-sentinel runs), killable one by one.

The data nodes have the production settings of docs/operations.md (AOF,
noeviction). The sentinels watch the master under the name MASTER with a quorum
of two and a short down-after time, so a killed master is replaced within a few
seconds instead of Sentinel's default 30 s.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.support import free_port, wait_for

MASTER = "wi-master"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


class SentinelCluster:
    def __init__(self, replicas: int = 2, sentinels: int = 3) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="wi-sentinel-"))
        self.data_ports = [free_port() for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.processes: dict[int, subprocess.Popen] = {}
        self.first_master = self.data_ports[0]

    # -- URLs -----------------------------------------------------------------------

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER}/{db}"

    # -- processes ------------------------------------------------------------------

    def start(self) -> SentinelCluster:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed for this test (make test installs it)"
        for port in self.data_ports:
            self._start_data_node(port, None if port == self.first_master else self.first_master)
        for port in self.data_ports[1:]:
            wait_for(
                lambda p=port: self.node(p).info("replication").get("master_link_status") == "up",
                timeout=20,
                message=f"replica {port} to sync",
            )
        for port in self.sentinel_ports:
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.first_master} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            self._spawn(port, [binary, str(conf), "--sentinel"])
        wait_for(self._sentinels_agree, timeout=30, message="sentinels to see every node")
        self.wait_replicas_acknowledge(len(self.data_ports) - 1)
        return self

    def _start_data_node(self, port: int, replica_of: int | None) -> None:
        node_dir = self.dir / f"node-{port}"
        node_dir.mkdir(exist_ok=True)
        args = [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(node_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
        ]
        if replica_of:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self._spawn(port, args)
        wait_for(lambda: _pings(port), timeout=10, message=f"redis {port} to start")

    def _spawn(self, port: int, args: list[str]) -> None:
        log = open(self.dir / f"{port}.log", "ab")  # noqa: SIM115 - lives with the process
        self.processes[port] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _sentinels_agree(self) -> bool:
        try:
            for port in self.sentinel_ports:
                state = self.sentinel(port).sentinel_master(MASTER)
                if state["num-other-sentinels"] < len(self.sentinel_ports) - 1:
                    return False
                if state["num-slaves"] < len(self.data_ports) - 1:
                    return False
        except redis.RedisError:
            return False
        return True

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True, socket_timeout=2)

    def sentinel(self, port: int | None = None) -> redis.Redis:
        return redis.Redis(
            port=port or self.sentinel_ports[0], decode_responses=True, socket_timeout=2
        )

    def master_port(self) -> int:
        """The master's port as the sentinels name it now."""
        for port in self.sentinel_ports:
            try:
                host_port = self.sentinel(port).sentinel_get_master_addr_by_name(MASTER)
            except redis.RedisError:
                continue
            if host_port:
                return int(host_port[1])
        raise AssertionError("no sentinel names a master")

    def master(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.master_port(), db=db, decode_responses=True, socket_timeout=2)

    def kill(self, port: int) -> None:
        """SIGKILL: no last write, no goodbye to the replicas."""
        process = self.processes.get(port)
        if process and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)

    def restart(self, port: int) -> None:
        """Starts a killed data node again on its port and directory, with the
        command line it first had (its AOF is read back): what a supervisor does.
        A master restarted so believes itself master until the sentinels make it
        a replica of the new one."""
        replica_of = None if port == self.first_master else self.first_master
        self._start_data_node(port, replica_of)

    def replica_ports(self) -> list[int]:
        master = self.master_port()
        return [port for port in self.data_ports if port != master]

    def pause(self, port: int) -> None:
        """SIGSTOP: the node holds its connections and answers nothing (a replica
        falling behind: a slow disk, a long fork, a network stall)."""
        self.processes[port].send_signal(signal.SIGSTOP)

    def resume(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGCONT)

    def kill_master(self) -> int:
        port = self.master_port()
        self.kill(port)
        return port

    def wait_new_master(self, old: int, timeout: float = 30) -> int:
        """Waits until the sentinels have promoted a replica and it takes writes."""

        def promoted() -> int | None:
            try:
                port = self.master_port()
            except AssertionError:
                return None
            if port == old:
                return None
            try:
                role = self.node(port).role()[0]
            except redis.RedisError:
                return None
            return port if role == "master" else None

        return wait_for(promoted, timeout=timeout, message="a replica to be promoted")

    def wait_replicas_acknowledge(self, count: int, timeout: float = 30) -> None:
        """A replica reports `online` before it acknowledges WAIT: wait for a probe
        write that `count` replicas confirm."""

        def confirmed() -> bool:
            try:
                master = self.master()
                master.set("wi-sentinel-probe", time.time())
                return master.wait(count, 100) >= count
            except (redis.RedisError, AssertionError):
                return False

        wait_for(confirmed, timeout=timeout, message=f"{count} replicas to acknowledge WAIT")

    def cleanup(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _pings(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_timeout=1).ping()
    except redis.RedisError:
        return False

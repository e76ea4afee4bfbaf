"""A Redis Sentinel deployment of real processes, on free ports: a master, a replica, three sentinels."""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis

from tests.services import RedisServer, free_port, redis_server_binary, stop_process, wait_for

MASTER = "batchery-test-master"
DOWN_AFTER_MS = 1000  # a sentinel takes the master for down after this long without an answer


class SentinelCluster:
    """A master, a replica and three sentinels watching them, as real redis-server processes."""

    def __init__(self, workdir: Path):
        self.master = RedisServer(_folder(workdir / "master"))
        self.replica = RedisServer(_folder(workdir / "replica"))
        self.replica.client.replicaof("127.0.0.1", self.master.port)
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels = [self._sentinel(_folder(workdir / f"sentinel-{port}"), port) for port in self.sentinel_ports]
        self.url = ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports) + "/0"
        wait_for(self._watching, timeout=60, interval=0.2, what="the sentinels to see the replica and each other")

    def _sentinel(self, folder: Path, port: int) -> subprocess.Popen:
        config = folder / "sentinel.conf"  # a sentinel rewrites its file: one each, in its own folder
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} 5000\n"
        )
        return subprocess.Popen(
            [redis_server_binary(), str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )

    def ask(self, port: int, *command: object) -> object:
        """A sentinel's answer to `command`."""
        return redis.Redis(port=port, socket_timeout=2, decode_responses=True).execute_command(*command)

    def _watching(self) -> bool:
        for process in self.sentinels:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server --sentinel exited with {process.returncode}")
        try:
            replica = self.master.client.info("replication").get("slave0") or {}
            return replica.get("state") == "online" and all(
                self.ask(port, "SENTINEL", "REPLICAS", MASTER)
                and len(self.ask(port, "SENTINEL", "SENTINELS", MASTER)) == 2
                for port in self.sentinel_ports
            )
        except redis.ConnectionError:
            return False

    def master_port(self) -> int:
        """The master's port, as the first sentinel says."""
        return int(self.ask(self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)[1])

    def stop(self) -> None:
        for process in self.sentinels:
            stop_process(process)
        self.replica.stop()
        self.master.stop()


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path

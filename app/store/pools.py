"""Which worker processes serve which queue: each worker's main process writes the queues it
serves and its pool's size (workers/pools.py), renewed while it lives, removed when it stops.

The API reads it to count processes per queue (`/metrics`), and to tell a job whose queue no
worker serves that it waits for one (its batches `stalled`, its status saying which queue).
"""

from __future__ import annotations

import time

import redis

from app.store import keys

# A worker renews its entries this often; an entry not renewed for RENEW_SECONDS * 3 has expired
# (its worker died without saying so: SIGKILL, a lost machine).
RENEW_SECONDS = 5.0
EXPIRES_SECONDS = RENEW_SECONDS * 3


class Pools:
    """The live workers of each queue, and how many pool processes they serve it with."""

    def __init__(self, client: redis.Redis):
        self.redis = client

    def serve(self, node: str, queues: list[str], processes: int, now: float | None = None) -> None:
        """Say that worker `node` serves `queues` with `processes` pool processes, for EXPIRES_SECONDS."""
        expires = (time.time() if now is None else now) + EXPIRES_SECONDS
        pipe = self.redis.pipeline(transaction=False)
        for queue in queues:
            pipe.hset(keys.queue_processes(queue), node, f"{expires!r} {processes}")
            pipe.sadd(keys.queues(), queue)
        pipe.execute()

    def leave(self, node: str, queues: list[str]) -> None:
        """Say that worker `node` no longer serves `queues` (it is stopping)."""
        pipe = self.redis.pipeline(transaction=False)
        for queue in queues:
            pipe.hdel(keys.queue_processes(queue), node)
        pipe.execute()

    def note_queue(self, queue: str) -> None:
        """Remember a queue a job runs on, so that /metrics reports it even with no worker."""
        self.redis.sadd(keys.queues(), queue)

    def known_queues(self) -> list[str]:
        """Every queue a worker served or a job ran on, sorted."""
        members = self.redis.smembers(keys.queues())
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)

    def processes(self, queues: list[str], now: float | None = None) -> dict[str, int]:
        """For each queue, the pool processes its live workers serve it with (0: no worker)."""
        at = time.time() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        for queue in queues:
            pipe.hgetall(keys.queue_processes(queue))
        counts, expired = {}, []
        for queue, entries in zip(queues, pipe.execute(), strict=True):
            live = {node: _live_processes(value, at) for node, value in entries.items()}
            counts[queue] = sum(live.values())
            expired += [(queue, node) for node, processes in live.items() if not processes]
        for queue, node in expired:  # workers that died without leaving: forgotten
            pipe.hdel(keys.queue_processes(queue), node)
        pipe.execute()
        return counts


def _live_processes(value: bytes | str, at: float) -> int:
    """The processes of one worker's entry, 0 once it expired."""
    text = value.decode() if isinstance(value, bytes) else value
    expires, _, processes = text.partition(" ")
    return int(processes) if float(expires) > at else 0

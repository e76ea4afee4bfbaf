"""Which pool processes are alive, as their workers' main processes say (workers/liveness.py).

A process is alive while its own liveness key exists, or while its worker's list of live children
names its pid: the rule `owner_alive` applies in Lua (app/store/lua/common.lua), read here for the
watchdog in one round trip.
"""

from __future__ import annotations

import redis

from app.model.wire import worker_of
from app.store import keys


def dead(client: redis.Redis, names: list[str]) -> set[str]:
    """The processes among `names` that neither their own liveness key nor their worker's list of
    live children says are alive. Raises redis.RedisError if Redis does not answer."""
    workers = sorted({found[0] for found in map(worker_of, names) if found})
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.exists(keys.proc_alive(name))
    for worker in workers:
        pipe.get(keys.worker_children(worker))
    replies = pipe.execute()
    alive, lists = replies[: len(names)], replies[len(names) :]
    children = {worker: set((found or b"").decode().split()) for worker, found in zip(workers, lists, strict=True)}
    return {name for name, exists in zip(names, alive, strict=True) if not exists and not _listed(name, children)}


def _listed(name: str, children: dict[str, set[str]]) -> bool:
    found = worker_of(name)
    return found is not None and found[1] in children.get(found[0], set())

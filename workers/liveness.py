"""Each pool process says it is alive, so that the watchdog can tell a batch whose process died
with its whole worker from one still running.

A pool process killed alone is seen by its worker's main process, which requeues the message at
once. A whole worker killed (SIGKILL, the container's OOM kill, a lost machine) leaves no one: the
Redis broker restores its unacked messages only after the visibility timeout (an hour by
default), and the job waited that long with its batches shown running. So each process renews a
key with a TTL (`keys.proc_alive`) from a thread, for as long as it lives; the watchdog publishes
again the batches of a process whose key expired (app/jobs/watchdog.py).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid

import redis

from app.model.wire import process_name
from app.store import keys
from workers.heartbeat import beat_forever

_named: dict[int, str] = {}  # pid -> this process's name, once it beats
_starting = threading.Lock()


def this_process(client: redis.Redis, ttl: float) -> str:
    """This process's name in `procs` (host, pid and a token of its own: a restarted container
    reuses pids), said alive for `ttl` seconds now and renewed every quarter of it from a thread."""
    name = _named.get(os.getpid())
    if name is None:
        with _starting:
            name = _named.get(os.getpid()) or _start(client, ttl)
    return name


def _start(client: redis.Redis, ttl: float) -> str:
    name = process_name(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:8])
    key = keys.proc_alive(name)

    def beat() -> None:
        client.set(key, "1", px=int(ttl * 1000))

    beat()  # before its first BEGIN names it
    beat_forever(beat, ttl / 4, "batchery-alive")
    _named[os.getpid()] = name
    return name

"""Who owns a batch's delivery: the pool process running it, for as long as that process lives.

The watchdog must tell a batch whose process died with its whole worker (SIGKILL of the worker,
the container's OOM kill, a lost machine: no one requeues its message, which the Redis broker
restores only after its visibility timeout, an hour) from a batch that is merely slow. A key
renewed by a thread of the pool process itself could not tell them apart: a predictor holding the
GIL (a C extension that does not release it) stops every thread of its process, the key expired,
and the batch ran again beside itself (dead-lettered with a `max_receive_count` of 1, its job
finalized before it ended).

So the worker's main process, which runs no predictor, keeps its children alive: every
RENEW_SECONDS (or every quarter of BATCHERY_LOST_SECONDS, if that is less) a thread of it (started
on `worker_ready`) SETs, with a TTL of BATCHERY_LOST_SECONDS,
- the liveness key of each pool process it has (`keys.proc_alive`; SET, not EXPIRE, so a key Redis
  lost is written again), and
- its list of live children's pids (`keys.worker_children`).
A process is alive (`owner_alive` in app/store/lua/common.lua, and the watchdog) while either says
so: a Redis that loses the liveness keys does not make a live process dead, and a process is
dead only once its main process stops naming it (it died alone: Celery starts another, with
another pid) or the whole worker stopped renewing (both expire). The renewal is frequent (one
pipelined round trip per worker) so that after a Redis outage or restart, which let every key
expire, the keys are back within seconds: a watchdog sweep in between could take every running
batch for dead (BEGIN then refuses the new message if the keys are back when it begins).

A pool process is named `<host>:<pid>:<token>`, the token its worker's (made in the main process
before the pool forks, so every child inherits it; a restarted container has a new one). Each
process also sets its own key as it starts, before its first BEGIN names it, and renews it from a
thread: under the `solo` or `threads` pool, where the predictor runs in the main process, that is
all there is, and a predictor holding the GIL longer than BATCHERY_LOST_SECONDS is taken for
dead there. The prefork pool (the default, and the Procfile's) is the supported one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

from app.model.wire import process_name
from app.store import keys
from workers.heartbeat import beat_forever

log = logging.getLogger(__name__)

# This worker's token: made at import, in the main process (Celery imports the task modules
# before it starts the pool), and inherited by every pool process it forks.
WORKER_TOKEN = uuid.uuid4().hex[:8]
HOST = socket.gethostname()

_named: dict[int, str] = {}  # pid -> this process's name, once it beats
_starting = threading.Lock()


def name_of(pid: int) -> str:
    """The name, in `procs` and in its liveness key, of this worker's process `pid`."""
    return process_name(HOST, pid, WORKER_TOKEN)


def worker_name() -> str:
    """This worker, as `keys.worker_children` names it: `<host>:<token>`."""
    return f"{HOST}:{WORKER_TOKEN}"


def this_process(client: redis.Redis, ttl: float) -> str:
    """This process's name in `procs`, said alive for `ttl` seconds now and renewed every quarter
    of it from a thread (its worker's main process renews it too: `Renewer`)."""
    name = _named.get(os.getpid())
    if name is None:
        with _starting:
            name = _named.get(os.getpid()) or _start(client, ttl)
    return name


def _start(client: redis.Redis, ttl: float) -> str:
    name = name_of(os.getpid())
    key = keys.proc_alive(name)

    def beat() -> None:
        client.set(key, "1", px=int(ttl * 1000))

    beat()  # before its first BEGIN names it
    beat_forever(beat, ttl / 4, "batchery-alive")
    _named[os.getpid()] = name
    return name


class Renewer:
    """The worker's main process keeping its live pool processes' ownership: their liveness keys
    and its list of their pids, written with a TTL of `ttl`."""

    def __init__(self, client: redis.Redis, ttl: float, children: Callable[[], list[int]]):
        """`children`: the pids of the pool's processes now (the pool's own list)."""
        self.client, self.ttl_ms, self.children = client, int(ttl * 1000), children
        self._lost: set[int] = set()  # children Celery reported lost, until the pool drops them
        self._lock = threading.Lock()  # a lost child's key is never written again after its DEL

    def live(self) -> list[int]:
        """The pids of the pool processes that run now (not reported lost, not zombies)."""
        listed = self.children()
        self._lost &= set(listed)  # a pid the pool no longer lists may come back for a new child
        return [pid for pid in listed if pid not in self._lost and running(pid)]

    def beat(self) -> None:
        """Say every live pool process alive for another `ttl`."""
        with self._lock:
            pids = self.live()
            pipe = self.client.pipeline(transaction=False)
            for pid in pids:
                pipe.set(keys.proc_alive(name_of(pid)), "1", px=self.ttl_ms)
            pipe.set(keys.worker_children(worker_name()), " ".join(map(str, pids)), px=self.ttl_ms)
            pipe.execute()

    def lost(self, pid: int) -> None:
        """A pool process died (Celery says so before it requeues the message): its ownership ends
        now, so the message's next delivery runs at once instead of waiting for the key to expire."""
        with self._lock:
            self._lost.add(pid)
            pids = [p for p in self.live() if p != pid]
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(keys.proc_alive(name_of(pid)))
            pipe.set(keys.worker_children(worker_name()), " ".join(map(str, pids)), px=self.ttl_ms)
            pipe.execute()


def running(pid: int) -> bool:
    """Whether process `pid` runs: exists and is not a zombie (a dead child not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): whether the pid exists at all
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    state = stat.rpartition(")")[2].split()[0]  # after the command name, which may hold spaces
    return state not in ("Z", "X")


# How often the main process renews at most: a cheap round trip, and the keys lost with a
# restarted Redis are back within this (the watchdog may sweep in between: module docstring).
RENEW_SECONDS = 2.0
_renewer: Renewer | None = None


def start_renewing(client: redis.Redis, ttl: float, pool: object) -> Renewer:
    """In the worker's main process: renew the ownership of `pool`'s processes (Celery's pool: its
    `info["processes"]`, or this process for a pool without any) from a thread, for as long as the
    process lives: every RENEW_SECONDS, or every quarter of `ttl` if that is less."""
    global _renewer

    def children() -> list[int]:
        info = getattr(pool, "info", None) or {}
        return [int(pid) for pid in info.get("processes") or [os.getpid()]]

    _renewer = Renewer(client, ttl, children)
    with contextlib.suppress(redis.RedisError):  # not up yet: the thread's next beat tries again
        _renewer.beat()
    beat_forever(_renewer.beat, min(ttl / 4, RENEW_SECONDS), "batchery-owners")
    return _renewer


def child_lost(pid: int | None) -> None:
    """In the worker's main process: the pool process `pid` died (Celery reports it lost); its
    ownership ends now. Never raises: Celery must go on to requeue the message."""
    if _renewer is None or not pid:
        return
    try:
        _renewer.lost(pid)
    except Exception as err:  # noqa: BLE001 - its keys expire anyway; the message must be requeued
        log.warning("pool process %s died; its liveness keys could not be removed: %s", pid, err)

"""Telling a pool process killed by the kernel's OOM killer from any other SIGKILL.

A SIGKILLed child looks the same to its parent whatever sent the signal (exit status -9), and the
pid of the OOM killer's victim is only in the kernel log (dmesg, /dev/kmsg), which a worker in a
container usually cannot read. What a process can read is the OOM-kill counter of its memory
cgroup (cgroup v2: `oom_kill` in `memory.events`; v1: `oom_kill` in `memory.oom_control`), and
the kernel raises it *before* it sends the SIGKILL ("task reaper must see this", mm/oom_kill.c).
So the worker's main process reads the counter when a batch's message reaches the worker and again
when Celery reports that process lost to SIGKILL: if it grew in between, an OOM kill happened in
that window.

The counter is per cgroup, not per process: all pool processes of a worker share the worker's
cgroup (children inherit it). `OomCounter.claim` gives each increment to at most one lost
delivery, and only to one that was running when it happened, so a plain SIGKILL is never taken
for an OOM kill unless an OOM kill in the same cgroup happened while it ran and no other lost
delivery claimed it first. In that rare overlap (one child OOM-killed, another SIGKILLed by
something else at about the same moment) the label can land on the wrong one of the two. The
kernel also picks its victim by size, so the delivery killed may be a bystander of a batch that
grew next to it. Without a readable memory cgroup the counter is /proc/vmstat's, which counts
every OOM kill on the machine: the same rule, with a wider window for coincidences.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path

from billiard.einfo import ExceptionInfo
from billiard.exceptions import Terminated, WorkerLostError
from celery.worker.request import Request

from app.config import Settings
from app.store.connection import store_client
from app.store.job_store import JobStore
from workers import liveness

log = logging.getLogger(__name__)

PROC = Path("/proc")
_SIGKILL = re.compile(r"\bsignal 9\b")  # billiard's "Worker exited prematurely: signal 9 (SIGKILL)"


def cgroup_mounts(proc: Path) -> list[tuple[str, str, str, str]]:
    """(root, mount point, fs type, super options) of each cgroup mount, from mountinfo."""
    found = []
    for line in (proc / "self" / "mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            found.append((fields[3], fields[4], tail[0], tail[2]))
    return found


def cgroup_dir(mount_point: str, mount_root: str, path: str) -> Path:
    """Where the cgroup `path` (as /proc/<pid>/cgroup names it) is under a mount of `mount_root`."""
    relative = os.path.relpath(path, mount_root) if path.startswith(mount_root) else path.lstrip("/")
    return Path(mount_point) if relative == "." else Path(mount_point) / relative


def counter_file(pid: int | str = "self", proc: Path = PROC) -> tuple[Path, str]:
    """The file holding the OOM-kill counter of `pid`'s memory cgroup and the kind of counter
    (`cgroup v2`, `cgroup v1` or `vmstat`: the machine-wide fallback)."""
    try:
        cgroups = (proc / str(pid) / "cgroup").read_text().splitlines()
        mounts = cgroup_mounts(proc)
    except OSError:
        cgroups, mounts = [], []
    for line in cgroups:
        _, controllers, path = line.split(":", 2)
        for root, point, fstype, options in mounts:
            if fstype == "cgroup" and "memory" in controllers.split(",") and "memory" in options.split(","):
                name, kind = "memory.oom_control", "cgroup v1"
            elif fstype == "cgroup2" and controllers == "":
                name, kind = "memory.events", "cgroup v2"
            else:
                continue
            # Inside a container without its own cgroup namespace the path names the host's
            # hierarchy while the mount shows only the container's part of it: then its root is
            # the container's cgroup.
            for candidate in (cgroup_dir(point, root, path), Path(point)):
                if (candidate / name).is_file():
                    return candidate / name, kind
    return proc / "vmstat", "vmstat"


def read_oom_kills(path: Path) -> int | None:
    """The `oom_kill` count in a counter file (None if it cannot be read)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    return oom_kills_in(text)


def oom_kills_in(text: str) -> int | None:
    """The `oom_kill` count in a counter file's text (None if it has none)."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill":
            return int(value)
    return None


class OomCounter:
    """The worker's OOM-kill counter, and which of its increments lost deliveries have claimed."""

    def __init__(self, path: Path, kind: str):
        self.path, self.kind = path, kind
        self._claimed = 0  # increments up to this value are already given to a lost delivery
        self._lock = threading.Lock()
        self._fd: int | None = None

    def read(self) -> int | None:
        """The counter now."""
        # Read for every message the main process receives: a kept descriptor read from offset 0
        # (the kernel renders these files afresh at each read) costs ~2 us, opening it ~16 us.
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            return oom_kills_in(os.pread(self._fd, 1 << 16, 0).decode())
        except OSError:
            return None

    def claim(self, before: int | None) -> bool:
        """Whether a delivery whose message arrived when the counter read `before`, and whose pool
        process was just lost to SIGKILL, was killed for memory; each increment goes to one at most."""
        current = self.read()
        if before is None or current is None:
            return False
        with self._lock:
            first_free = max(before, self._claimed)
            if current <= first_free:
                return False
            self._claimed = first_free + 1
            return True


_counter: OomCounter | None = None
_store: JobStore | None = None
_settings: Settings | None = None  # given by workers/celery_app.py (which imports this module)


def counter() -> OomCounter:
    """This worker's counter, found once (the main process's cgroup, which pool processes inherit)."""
    global _counter
    if _counter is None:
        _counter = OomCounter(*counter_file())
        log.info("OOM kills are read from %s (%s)", _counter.path, _counter.kind)
    return _counter


def use_job_store(settings: Settings) -> None:
    """Record OOM kills in the job store the settings name (connected on the first one)."""
    global _settings, _store
    _settings, _store = settings, None


def store() -> JobStore:
    """A job store for the worker's main process: a short timeout, since it must not stall the
    main loop for long (tasks run in pool processes and have their own). Raises RuntimeError
    before `use_job_store`."""
    global _store
    if _settings is None:
        raise RuntimeError("workers.oom.use_job_store() was not called: no job store to record OOM kills in")
    if _store is None:
        client = store_client(_settings.redis_url, _settings, socket_timeout=5, socket_connect_timeout=5)
        _store = JobStore(client, lease_seconds=_settings.enqueue_lease_seconds, job_log_lines=_settings.job_log_lines)
    return _store


def on_worker_ready(**kwargs: object) -> None:
    """Find the counter in the worker's main process as it starts (and log which one it is)."""
    counter()


def is_sigkill(exc: BaseException) -> bool:
    """Whether Celery reports the pool process as lost to SIGKILL."""
    return isinstance(exc, WorkerLostError) and bool(_SIGKILL.search(str(exc)))


class BatchRequest(Request):
    """The request of a `run_batch` task, in the worker's main process: notes the OOM-kill counter
    when the batch's message arrives and, if the pool process running it is SIGKILLed, records in
    the job store whether the kernel killed it for memory, before Celery puts the message back."""

    oom_before: int | None = None

    def __init__(self, *args: object, **kwargs: object) -> None:
        """Read the counter as the message arrives, before any pool process can start the batch.

        Not in `execute_using_pool`: Celery's strategy subclasses this class with its own (see
        `create_request_cls`); and not in `on_accepted`, which may run after a fast kill."""
        self.oom_before = counter().read()
        super().__init__(*args, **kwargs)

    def on_failure(self, exc_info: ExceptionInfo, send_failed_event: bool = True, return_ok: bool = False) -> object:
        """Record an OOM kill of the pool process, end its ownership of the batch, then let Celery
        requeue the message."""
        exc = exc_info.exception
        exc = getattr(exc, "exc", exc)  # billiard's ExceptionWithTraceback
        if is_sigkill(exc) and counter().claim(self.oom_before):
            self._record_oom()
        if isinstance(exc, WorkerLostError | Terminated):  # its batch's ownership ends before the requeue
            liveness.child_lost(self.worker_pid)
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def _record_oom(self) -> None:
        job_id, batch_id = self.args[0], self.args[1]
        log.error(
            "job %s: batch %s: the pool process (pid %s) was killed by the kernel for running out of memory",
            job_id,
            batch_id,
            self.worker_pid,
        )
        try:
            # a bundle's message names its first batch: the store counts the one it carried
            generation = int(self.args[3]) if len(self.args) > 3 else 0
            store().mark_oom(job_id, batch_id, time.time(), generation)
        except Exception as err:  # noqa: BLE001 - never keep Celery from requeueing the message
            log.error("job %s: batch %s: could not record the OOM kill: %s", job_id, batch_id, err)

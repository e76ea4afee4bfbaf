"""Outcomes a worker could not record because the job store did not answer for longer than
BATCHERY_STORE_OUTAGE_SECONDS: recorded once it answers again.

The batch's `predict` had run, and its task failed on the store's error (its message acked):
without its outcome the batch stayed in flight with a delivery begun and no process running it,
and the job waited for its timeout, forever without one. The outcome is known, so a thread of
the process keeps it and records it when the store is back, and what the recording releases
(the next batches, the finalizer) is followed as the task would have.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from workers.heartbeat import beat_forever

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0
# the store's errors that say it did not answer: the outcome is kept for later; any other is not
UNANSWERED = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

_pending: list[Callable[[], object]] = []
_lock = threading.Lock()
_recording = threading.Lock()  # one recorder at a time: the thread, or a task about to begin a batch
_thread: threading.Thread | None = None


def keep(record: Callable[[], object], what: str) -> None:
    """Record an outcome later: `record()` is called every RETRY_SECONDS until the store answers."""
    global _thread
    with _lock:
        _pending.append(record)
        if _thread is None:
            _thread = beat_forever(record_kept, RETRY_SECONDS, "batchery-late-outcomes")
    log.warning("%s: the job store did not answer; the outcome is kept and recorded once it does", what)


def record_kept() -> None:
    """Record the kept outcomes, oldest first, until the store fails to answer again.

    The thread calls it every RETRY_SECONDS, and a task before it begins a batch: a process that
    begins another batch while it holds an outcome leaves the held batch in no `procs` record, so
    that if the process then died, nothing would publish that batch again.
    """
    if not _pending:
        return
    with _recording:  # two recorders at once would each record the same outcome
        with _lock:
            todo = list(_pending)
        for record in todo:
            try:
                record()
            except UNANSWERED:
                return  # still down: the next round tries again
            except Exception:  # an outcome that cannot be recorded is not retried forever
                log.exception("a kept outcome could not be recorded")
            with _lock:
                _pending.remove(record)

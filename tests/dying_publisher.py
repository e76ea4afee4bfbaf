"""A worker app (`celery -A tests.dying_publisher worker`) whose first pool process to have a
message to publish after counting its batch (released batches on SQS; the finalizer on Redis,
whose release pushes batch messages itself) SIGKILLs itself just before publishing it: the
window between the store call and the publish, hit on purpose. Once per marker file."""

from __future__ import annotations

import os
import signal

import workers.tasks as tasks
from workers import celery

__all__ = ["celery"]

MARKER = os.environ["BATCHERY_TEST_DIE_MARKER"]  # created by the process that dies
_follow = tasks.follow


def _dying_follow(dispatcher, store, spec, outcome) -> None:
    if outcome.released or outcome.finalize:
        try:
            os.close(os.open(MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    _follow(dispatcher, store, spec, outcome)


tasks.follow = _dying_follow

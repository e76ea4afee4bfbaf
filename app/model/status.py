"""The Cortex job status codes and which one wins when two could apply."""

from enum import StrEnum


class Status(StrEnum):
    """A job's status code, as Cortex named it; each member is its string (`"status_running"`)."""

    ENQUEUING = "status_enqueuing"
    RUNNING = "status_running"
    ENQUEUE_FAILED = "status_enqueue_failed"
    COMPLETED_WITH_FAILURES = "status_completed_with_failures"
    SUCCEEDED = "status_succeeded"
    UNEXPECTED_ERROR = "status_unexpected_error"
    WORKER_ERROR = "status_worker_error"
    WORKER_OOM = "status_worker_oom"
    TIMED_OUT = "status_timed_out"
    STOPPED = "status_stopped"
    PAUSED = "status_paused"  # Batchery's: not final; nothing of the job starts until it is resumed


# The codes by their short names, as the rest of the code and the tests use them (`status.RUNNING`).
ENQUEUING = Status.ENQUEUING
RUNNING = Status.RUNNING
ENQUEUE_FAILED = Status.ENQUEUE_FAILED
COMPLETED_WITH_FAILURES = Status.COMPLETED_WITH_FAILURES
SUCCEEDED = Status.SUCCEEDED
UNEXPECTED_ERROR = Status.UNEXPECTED_ERROR
WORKER_ERROR = Status.WORKER_ERROR
WORKER_OOM = Status.WORKER_OOM
TIMED_OUT = Status.TIMED_OUT
STOPPED = Status.STOPPED
PAUSED = Status.PAUSED

# Lowest first: when two statuses could apply, the later one in this list wins.
PRECEDENCE: list[str] = [
    ENQUEUING,
    RUNNING,
    PAUSED,
    SUCCEEDED,
    COMPLETED_WITH_FAILURES,
    UNEXPECTED_ERROR,
    ENQUEUE_FAILED,
    WORKER_ERROR,
    WORKER_OOM,
    TIMED_OUT,
    STOPPED,
]
IN_PROGRESS = frozenset({ENQUEUING, RUNNING, PAUSED})
FINAL = frozenset(PRECEDENCE) - IN_PROGRESS


def strongest(*statuses: str) -> str:
    """The status that wins among those that apply."""
    return max(statuses, key=PRECEDENCE.index)


def is_final(status: str) -> bool:
    """True once a job can no longer change."""
    return status in FINAL

"""The Cortex job status codes and which one wins when two could apply."""

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

# Lowest first: when two statuses could apply, the later one in this list wins.
PRECEDENCE = [
    ENQUEUING,
    RUNNING,
    SUCCEEDED,
    COMPLETED_WITH_FAILURES,
    UNEXPECTED_ERROR,
    ENQUEUE_FAILED,
    WORKER_ERROR,
    WORKER_OOM,
    TIMED_OUT,
    STOPPED,
]
IN_PROGRESS = frozenset({ENQUEUING, RUNNING})
FINAL = frozenset(PRECEDENCE) - IN_PROGRESS


def strongest(*statuses: str) -> str:
    """The status that wins among those that apply."""
    return max(statuses, key=PRECEDENCE.index)


def is_final(status: str) -> bool:
    """True once a job can no longer change."""
    return status in FINAL

"""Queues: the broker queue each API's jobs run on (dedicated worker pools), and its control queue.

An API names its queue in cortex.yaml (`queue: gpu`); an API with `compute.gpu` > 0 and no
`queue:` goes to the `gpu` queue; any other to the default queue (BATCHERY_QUEUE). A job records
its queue in its spec. Its batches go to that queue; its finalizer and S3 enqueuer go to the
queue's control queue, `<queue>-control`, which a process reserved for control work serves, so
that they never wait behind batches (the control lane).
"""

from __future__ import annotations

import re

GPU_QUEUE = "gpu"  # the queue of an API with compute.gpu > 0 that names none
CONTROL_SUFFIX = "-control"
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def queue_name_error(name: object) -> str:
    """What is wrong with `name` as a queue's name, in words a user can act on; "" if nothing."""
    if not isinstance(name, str) or not QUEUE_NAME.match(name):
        return f"queue {name!r} must be 1 to 64 letters, digits, '_' or '-'"
    if name.endswith(CONTROL_SUFFIX):
        return f"queue {name!r} must not end in {CONTROL_SUFFIX!r} (Batchery's control queues are named so)"
    return ""


def api_queue(api: dict, default: str) -> str:
    """The queue a deployed API's jobs run on: its cortex.yaml `queue:`, else `gpu` when its
    `compute.gpu` > 0, else `default` (the submitting process's BATCHERY_QUEUE)."""
    if api.get("queue"):
        return str(api["queue"])
    gpu = (api.get("compute") or {}).get("gpu") or 0
    return GPU_QUEUE if isinstance(gpu, int | float) and gpu > 0 else default


def control_queue(queue: str) -> str:
    """The control queue of `queue`: where its jobs' finalizers and enqueuers are published."""
    return f"{queue}{CONTROL_SUFFIX}"


def job_queue(spec: dict, default: str) -> str:
    """The queue a job's batches run on: the one its spec records, else (a job submitted before
    queues were recorded) `default`."""
    return spec.get("queue") or default


def no_worker_message(queue: str) -> str:
    """What a job whose queue no worker serves says in its status."""
    return f'no worker serves the queue "{queue}": start one with BATCHERY_QUEUES={queue}'

"""What travels between the API and the workers, named and encoded in one place.

Celery task names are part of the wire format: the API publishes by name (`app/` never imports
`workers/`), and the store's Lua builds a batch's message with the same name.

A backlog entry is one batch as the job store keeps it, from the backlog to the broker message:
`"<batch_id> <body>"`, the batch id, one space, then the batch body (a JSON text). The id holds
no space, so the first space ends it. The store's Lua reads it with `entry_batch_id`
(app/store/lua/common.lua), the one place outside this module that knows the format.
"""

from __future__ import annotations

import re

RUN_BATCH = "batchery.run_batch"
FINALIZE_JOB = "batchery.finalize_job"
ENQUEUE_JOB = "batchery.enqueue_job"


def batch_task_id(job_id: str, batch_id: str, generation: int = 0) -> str:
    """The Celery task id of a batch's message, as Flower and `celery control` show it:
    `<job_id>.b<batch_id>.a<n>`, the n-th message of the batch (1 for the first; the watchdog, a
    resume or a revoke publishes it again with the next generation, n + 1). A retry of a failed
    attempt keeps its message's id, as Celery's retries do. The store's Lua writes the first one
    (`batch_message` in app/store/lua/common.lua); nothing reads an id back."""
    return f"{job_id}.b{batch_id}.a{generation + 1}"


# A bundle (app/store/lua/common.lua `take_next`) carries no backlog entry longer than this: a
# batch that large is not the sub-millisecond kind bundles are for, and it travels in a message of
# its own, so that a broker's limit on a message's size (an SQS queue's MaximumMessageSize) treats
# it the same whatever the timing.
BUNDLED_ENTRY_BYTES = 64 * 1024


def backlog_entry(batch_id: int | str, body: str) -> str:
    """A backlog entry of a batch: its id, a space, its body."""
    return f"{batch_id} {body}"


def split_backlog_entry(entry: str) -> tuple[str, str]:
    """A backlog entry's batch id and body."""
    batch_id, _, body = entry.partition(" ")
    return batch_id, body


def entry_batch_id(entry: str) -> str:
    """A backlog entry's batch id."""
    return entry.partition(" ")[0]


# A pool process's record in a job's `procs` hash (app/store/keys.py `procs`): under the process's
# name, what it is doing and for which batch, `"<state> <batch_id>"`. The store's scripts write
# and match it too (BEGIN, PROCEED, RECORD, REVIVE); the watchdog reads the names.
INITIALIZING = "initializing"  # loading the job's predictor for the batch
RUNNING = "running"  # running the batch
PROCESS_STATES = (INITIALIZING, RUNNING)


def process_name(host: str, pid: int, token: str) -> str:
    """A pool process's name in `procs` and in its liveness key: host, pid and a token of its own
    (a restarted container reuses pids)."""
    return f"{host}:{pid}:{token}"


def worker_of(proc: str) -> tuple[str, str] | None:
    """The worker a pool process belongs to and its pid: `("<host>:<token>", "<pid>")` from its
    name `<host>:<pid>:<token>` (the token is its worker's: workers/liveness.py); None for a name
    not of that form."""
    found = re.fullmatch(r"(.*):(\d+):([^:]*)", proc)
    return (f"{found[1]}:{found[3]}", found[2]) if found else None


def process_record(state: str, batch_id: str) -> str:
    """What a process in `state` (INITIALIZING or RUNNING) on `batch_id` writes in `procs`."""
    return f"{state} {batch_id}"


def parse_process_record(record: str) -> tuple[str, str]:
    """A `procs` record as (state, batch_id)."""
    state, _, batch_id = record.partition(" ")
    return state, batch_id

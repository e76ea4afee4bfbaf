"""What travels between the API and the workers, named and encoded in one place.

Celery task names are part of the wire format: the API publishes by name (`app/` never imports
`workers/`), and the store's Lua builds a batch's message with the same name.

A backlog entry is one batch as the job store keeps it, from the backlog to the broker message:
`"<batch_id> <body>"`, the batch id, one space, then the batch body (a JSON text). The id holds
no space, so the first space ends it. The store's Lua reads it with `entry_batch_id`
(app/store/lua/common.lua), the one place outside this module that knows the format.
"""

from __future__ import annotations

RUN_BATCH = "batchery.run_batch"
FINALIZE_JOB = "batchery.finalize_job"
ENQUEUE_JOB = "batchery.enqueue_job"


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

"""What a job keeps for a retry of it: the batches that failed for good, and those that never
reached an outcome before it ended (stopped, timed out); and the retries made of it.

The store's Lua writes them (record.lua keeps a batch's entry when it fails for good; common.lua's
`keep_unfinished` keeps the backlog and the in-flight batches when the job ends), at O(1) per
batch outcome. Reading them costs as many entries as it returns.
"""

from __future__ import annotations

import redis

from app.model.wire import entry_batch_id
from app.store import keys
from app.store.replies import as_text
from app.store.scripts import lua_file

# The most failed batch ids on_job_complete is given (the rest are said to be cut).
FAILED_IDS_LIMIT = 10_000


class RetryStore:
    """A job's kept batches, for a retry of them and for `on_job_complete`."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._link = client.register_script(lua_file("retry_link"))

    def entries(self, job_id: str, unfinished: bool = False) -> list[str]:
        """The backlog entries of the job's batches that failed for good and, if `unfinished`, of
        those that never reached an outcome, in the job's order (by batch number)."""
        pipe = self.redis.pipeline(transaction=True)  # one moment: a late outcome moves a batch between them
        pipe.zrange(keys.failed_batches(job_id), 0, -1)
        if unfinished:
            pipe.lrange(keys.unfinished_backlog(job_id), 0, -1)
            pipe.hvals(keys.unfinished_inflight(job_id))
        found = [as_text(raw) for reply in pipe.execute() for raw in reply]
        return sorted(set(found), key=_batch_number)

    def failed_ids(self, job_id: str, limit: int = FAILED_IDS_LIMIT) -> tuple[list[str], bool]:
        """The ids of the job's batches that failed for good, the first `limit` by batch number,
        and whether there were more."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrange(keys.failed_batches(job_id), 0, limit - 1)
        pipe.zcard(keys.failed_batches(job_id))
        entries, count = pipe.execute()
        return [entry_batch_id(as_text(raw)) for raw in entries], count > limit

    def link(self, parent_id: str, child_id: str) -> bool:
        """Add `child_id` to the parent's `retry_job_ids`; False if the parent no longer exists."""
        return bool(self._link(keys=[keys.job(parent_id)], args=[child_id]))


def _batch_number(entry: str) -> tuple[int, str]:
    batch_id = entry_batch_id(entry)
    return (int(batch_id), "") if batch_id.isdigit() else (-1, batch_id)

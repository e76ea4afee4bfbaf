"""What `on_job_complete(self, job)` is given: the job's status as `GET` answers it, with the final
status it is about to be given and the ids of its batches that failed for good."""

from __future__ import annotations

from app.model.job import job_status
from app.store.retries import FAILED_IDS_LIMIT, RetryStore


def completed_job(
    state: dict, final: str, message: str, retries: RetryStore, at: float, limit: int = FAILED_IDS_LIMIT
) -> dict:
    """The job's `job_status` as it reads once it ends `final` (with `message`) at `at`, plus
    `failed_batch_ids` (sorted by batch number, at most `limit`) and
    `failed_batch_ids_truncated` (True when there were more). One read of the kept failed batches:
    no scan of the job."""
    view = job_status(dict(state, status=final, message=message, end=at))
    ids, truncated = retries.failed_ids(state["spec"]["job_id"], limit)
    view["failed_batch_ids"] = ids
    view["failed_batch_ids_truncated"] = truncated
    return view

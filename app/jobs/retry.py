"""Retrying a job that ended: a new job, its child, whose batches are the parent's batches that
failed for good (and, asked for, those that never ran to an outcome), as they were.

The batches keep their ids, their items and their order, so the child's batch `7` is the parent's
batch `7`; an S3 input's batches are its bodies as the worker received them (lists of paths, or
byte ranges of the objects as they were listed). The child runs the API as deployed now (a fix
deployed since the failures applies), with the parent's `workers`, `timeout` and
`sqs_dead_letter_queue` unless the request overrides them, and the parent's `config` with the
request's deep-merged over it.
"""

from __future__ import annotations

import logging

from app.errors import InvalidRequest, JobNotFound
from app.jobs import retention
from app.jobs.services import Services
from app.model import status
from app.model.job import deep_merge, now
from app.store.joblog import for_job
from app.store.retries import RetryStore

log = logging.getLogger(__name__)

OVERRIDABLE = ("workers", "timeout", "config", "sqs_dead_letter_queue")


class Retrier:
    """Creates the child job of a job that ended, from the batches it kept (app/store/retries.py)."""

    def __init__(self, services: Services):
        self.services = services
        self.retries = RetryStore(services.redis)

    def retry(self, api_name: str, job_id: str, request: dict) -> dict:
        """Create the retry of a job that ended and return its spec; `request` as RetrySchema loads
        it. Raises ApiNotFound, JobNotFound, InvalidRequest (the job is in progress, or has nothing
        to retry, or an override is refused), BrokerUnavailable."""
        api = self.services.registry.get(api_name)
        state = self.services.store.state(job_id, api_name, now())
        if state is None:  # it may have expired: the 404 says so
            raise retention.job_not_found(self.services, api_name, job_id)
        if state["spec"]["api_name"] != api_name:
            raise JobNotFound(f"job {job_id} does not exist for api {api_name}")
        if not status.is_final(state["status"]):
            raise InvalidRequest(
                f"job {job_id} is still in progress ({state['status']}): retry it once it has ended, "
                "or stop it first (DELETE) and retry it with include unfinished"
            )
        include = request.get("include", "failed")
        entries = self.retries.entries(job_id, unfinished=include == "unfinished")
        if not entries:
            raise InvalidRequest(nothing_to_retry(job_id, state, include))
        submission = self._submission(state["spec"], request)
        child = self.services.submitter.submit_batches(api, submission, entries, {"parent_job_id": job_id})
        self.retries.link(job_id, child["job_id"])
        with for_job(api_name, job_id, self.services.job_log):
            log.info("retried as job %s: %d batches (%s)", child["job_id"], len(entries), include)
        return child

    def _submission(self, parent: dict, request: dict) -> dict:
        """The child's settings: the request's overrides, else the parent's; its dead-letter queue
        checked as a submission's. Raises InvalidRequest."""
        submission = {name: request.get(name, parent.get(name)) for name in OVERRIDABLE}
        # the parent's config with the request's merged over it (change one key, keep the rest);
        # build_spec merges that over the API's config, as a submission's
        submission["config"] = deep_merge(parent.get("config") or {}, request.get("config") or {})
        submission["output"] = parent.get("output")  # the retried batches' predictions go where the parent's went
        dead_letter_queue = submission["sqs_dead_letter_queue"]
        if dead_letter_queue:
            try:
                self.services.dead_letters.check(dead_letter_queue["arn"])
            except ValueError as err:
                raise InvalidRequest(f"sqs_dead_letter_queue.arn: {err}") from None
        return submission


def nothing_to_retry(job_id: str, state: dict, include: str) -> str:
    """The 400's message for a job that ended with nothing to retry: why, and what else to ask."""
    final = state["status"]
    if state["failed_batches"]:  # counted, but not kept: it ended before Batchery kept them
        return (
            f"job {job_id} has nothing to retry: its {state['failed_batches']} batches that failed for good "
            "were not kept (it ended before this version of Batchery); replay them from its dead letters"
        )
    if include == "unfinished":
        return f"job {job_id} has nothing to retry: it ended {final}, and every one of its batches succeeded"
    hint = ""
    if final in (status.STOPPED, status.TIMED_OUT, status.WORKER_ERROR, status.ENQUEUE_FAILED):
        hint = '; to run the batches it never ran, send {"include": "unfinished"}'
    return f"job {job_id} has nothing to retry: it ended {final} with no batch that failed for good{hint}"

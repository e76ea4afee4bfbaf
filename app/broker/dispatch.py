"""Publishing batches and finalizers to the broker, by task name (`app/` never imports `workers/`)."""

from __future__ import annotations

from celery import Celery

from app.broker.config import ENQUEUE_JOB, FINALIZE_JOB, RUN_BATCH
from app.model.wire import batch_task_id, split_backlog_entry

# What SQS answers a message over its queue's MaximumMessageSize.
SQS_TOO_LARGE = "Message must be shorter than"


def too_large(err: Exception) -> bool:
    """Whether the broker refused a message for its size (retrying cannot help)."""
    return SQS_TOO_LARGE in str(err)


class Dispatcher:
    """Sends the tasks of a job to the broker."""

    def __init__(self, celery: Celery):
        self.celery = celery

    def publish_batches(self, job_id: str, entries: list[str], refuse_too_large: bool = False) -> list[str]:
        """Publish released backlog entries (`"<batch_id> <body>"`) as batch tasks; the entries the
        broker refused as over its message size (an SQS queue's MaximumMessageSize), which can
        never be published. Raises the broker's other errors, and that one if `refuse_too_large`."""
        refused: list[str] = []
        if not entries:
            return refused
        with self.celery.producer_or_acquire() as producer:
            for entry in entries:
                batch_id, body = split_backlog_entry(entry)
                try:
                    task_id = batch_task_id(job_id, batch_id)
                    self.celery.send_task(RUN_BATCH, args=[job_id, batch_id, body], producer=producer, task_id=task_id)
                except Exception as err:
                    if refuse_too_large or not too_large(err):
                        raise
                    refused.append(entry)
        return refused

    def republish_batches(self, job_id: str, entries: list[tuple[int, str]]) -> None:
        """Publish again batches whose message was lost, each with its new generation (the older
        messages, should they turn up, are skipped)."""
        with self.celery.producer_or_acquire() as producer:
            for generation, entry in entries:
                batch_id, body = split_backlog_entry(entry)
                task_id = batch_task_id(job_id, batch_id, generation)
                self.celery.send_task(
                    RUN_BATCH, args=[job_id, batch_id, body, generation], producer=producer, task_id=task_id
                )

    def publish_finalizer(self, job_id: str) -> None:
        """Publish the job's finalizer (decides the final status, runs on_job_complete)."""
        self.celery.send_task(FINALIZE_JOB, args=[job_id])

    def publish_enqueuer(self, job_id: str) -> None:
        """Publish the task that streams a job's S3 input into its backlog."""
        self.celery.send_task(ENQUEUE_JOB, args=[job_id])

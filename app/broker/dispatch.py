"""Publishing batches and finalizers to the broker, by task name (`app/` never imports `workers/`)."""

from __future__ import annotations

from celery import Celery

from app.broker.config import ENQUEUE_JOB, FINALIZE_JOB, RUN_BATCH
from app.model.queues import control_queue
from app.model.wire import batch_task_id, split_backlog_entry

# What SQS answers a message over its queue's MaximumMessageSize.
SQS_TOO_LARGE = "Message must be shorter than"


def too_large(err: Exception) -> bool:
    """Whether the broker refused a message for its size (retrying cannot help)."""
    return SQS_TOO_LARGE in str(err)


class Dispatcher:
    """Sends the tasks of a job to the broker: its batches to the job's queue (default: the
    default queue), its finalizer and enqueuer to that queue's control queue."""

    def __init__(self, celery: Celery):
        self.celery = celery

    def _queue(self, queue: str) -> str:
        return queue or self.celery.conf.task_default_queue

    def publish_batches(
        self, job_id: str, entries: list[str], refuse_too_large: bool = False, queue: str = ""
    ) -> list[str]:
        """Publish released backlog entries (`"<batch_id> <body>"`) as batch tasks on `queue`; the
        entries the broker refused as over its message size (an SQS queue's MaximumMessageSize),
        which can never be published. Raises the broker's other errors, and that one if
        `refuse_too_large`."""
        refused: list[str] = []
        if not entries:
            return refused
        with self.celery.producer_or_acquire() as producer:
            for entry in entries:
                batch_id, body = split_backlog_entry(entry)
                try:
                    task_id = batch_task_id(job_id, batch_id)
                    self.celery.send_task(
                        RUN_BATCH,
                        args=[job_id, batch_id, body],
                        producer=producer,
                        task_id=task_id,
                        queue=self._queue(queue),
                    )
                except Exception as err:
                    if refuse_too_large or not too_large(err):
                        raise
                    refused.append(entry)
        return refused

    def republish_batches(self, job_id: str, entries: list[tuple[int, str]], queue: str = "") -> None:
        """Publish again, on `queue`, batches whose message was lost, each with its new generation
        (the older messages, should they turn up, are skipped)."""
        with self.celery.producer_or_acquire() as producer:
            for generation, entry in entries:
                batch_id, body = split_backlog_entry(entry)
                task_id = batch_task_id(job_id, batch_id, generation)
                args = [job_id, batch_id, body, generation]
                queue_name = self._queue(queue)
                self.celery.send_task(RUN_BATCH, args=args, producer=producer, task_id=task_id, queue=queue_name)

    def publish_finalizer(self, job_id: str, queue: str = "") -> None:
        """Publish the job's finalizer (decides the final status, runs on_job_complete) on the
        control queue of `queue`."""
        self.celery.send_task(FINALIZE_JOB, args=[job_id], queue=control_queue(self._queue(queue)))

    def publish_enqueuer(self, job_id: str, queue: str = "") -> None:
        """Publish the task that streams a job's S3 input into its backlog, on the control queue
        of `queue`."""
        self.celery.send_task(ENQUEUE_JOB, args=[job_id], queue=control_queue(self._queue(queue)))

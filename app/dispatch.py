"""Publishing batches and finalizers to the broker, by task name (`app/` never imports `workers/`)."""

from __future__ import annotations

from celery import Celery

from app.broker import ENQUEUE_JOB, FINALIZE_JOB, RUN_BATCH


class Dispatcher:
    """Sends the tasks of a job to the broker."""

    def __init__(self, celery: Celery):
        self.celery = celery

    def publish_batches(self, job_id: str, entries: list[str]) -> None:
        """Publish released backlog entries (`"<batch_id> <body>"`) as batch tasks."""
        if not entries:
            return
        with self.celery.producer_or_acquire() as producer:
            for entry in entries:
                batch_id, _, body = entry.partition(" ")
                self.celery.send_task(RUN_BATCH, args=[job_id, batch_id, body], producer=producer)

    def republish_batches(self, job_id: str, entries: list[tuple[int, str]]) -> None:
        """Publish again batches whose message was lost, each with its new generation (the older
        messages, should they turn up, are skipped)."""
        with self.celery.producer_or_acquire() as producer:
            for generation, entry in entries:
                batch_id, _, body = entry.partition(" ")
                self.celery.send_task(RUN_BATCH, args=[job_id, batch_id, body, generation], producer=producer)

    def publish_finalizer(self, job_id: str) -> None:
        """Publish the job's finalizer (decides the final status, runs on_job_complete)."""
        self.celery.send_task(FINALIZE_JOB, args=[job_id])

    def publish_enqueuer(self, job_id: str) -> None:
        """Publish the task that streams a job's S3 input into its backlog."""
        self.celery.send_task(ENQUEUE_JOB, args=[job_id])

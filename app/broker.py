"""The Celery configuration shared by the API (which publishes) and the workers (which consume)."""

from __future__ import annotations

from urllib.parse import urlsplit

from celery import Celery

from app.config import Settings

RUN_BATCH = "batchery.run_batch"
FINALIZE_JOB = "batchery.finalize_job"
ENQUEUE_JOB = "batchery.enqueue_job"


def celery_config(settings: Settings) -> dict:
    """Celery settings: JSON only, late acks, one message prefetched per process."""
    return {
        "broker_url": settings.broker,
        "result_backend": settings.redis_url,
        "task_default_queue": settings.queue,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],  # no pickle: a pickled message is refused, never loaded
        "task_acks_late": True,  # a batch whose worker dies goes back to the queue...
        "task_reject_on_worker_lost": True,  # ...also when the pool child is SIGKILLed
        "task_ignore_result": True,  # job state lives in Batchery's own counters
        "worker_prefetch_multiplier": 1,  # a process holds one batch: the `workers` cap stays exact
        "worker_send_task_events": True,  # Flower sees every batch
        "task_send_sent_event": True,
        "broker_connection_retry_on_startup": True,
        # Redis requeues a message unacked this long; set it above your longest batch.
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "worker_hijack_root_logger": False,
    }


def make_celery(settings: Settings, include: list[str] | None = None) -> Celery:
    """A Celery app configured for Batchery."""
    celery = Celery("batchery", include=include or [])
    celery.conf.update(celery_config(settings))
    return celery


def public_queue_url(settings: Settings) -> str:
    """The broker queue as shown in job specs (`sqs_url`): scheme, host and queue, no credentials."""
    url = urlsplit(settings.broker)
    host = url.hostname or ""
    if url.port:
        host = f"{host}:{url.port}"
    return f"{url.scheme}://{host}/{settings.queue}"

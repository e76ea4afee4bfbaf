"""The Celery configuration shared by the API (which publishes) and the workers (which consume)."""

from __future__ import annotations

from urllib.parse import urlsplit

from celery import Celery

from app.config import Settings
from app.model.queues import control_queue
from app.model.wire import ENQUEUE_JOB, FINALIZE_JOB, RUN_BATCH
from app.store.connection import is_sentinel, parse_sentinel_url

__all__ = ["ENQUEUE_JOB", "FINALIZE_JOB", "RUN_BATCH", "make_celery"]


def is_sqs(settings: Settings) -> bool:
    """Whether the broker is Amazon SQS (kombu's SQS transport) rather than Redis."""
    return settings.broker.startswith("sqs://")


def transport_options(settings: Settings) -> dict:
    """The broker's transport options: the one place the two brokers differ in configuration."""
    if not is_sqs(settings):
        # Redis requeues a message unacked this long (counted from prefetch): set it above your
        # longest batch, or a batch still running is delivered twice.
        return {"visibility_timeout": settings.visibility_timeout, **sentinel_options(settings.broker, settings)}
    return {
        "region": settings.sqs_region,
        "queue_name_prefix": settings.sqs_queue_prefix,
        # Workers keep a running batch invisible (workers/visibility.py), so this can stay short:
        # a batch whose worker died is delivered again this soon.
        "visibility_timeout": settings.sqs_visibility_timeout,
        "wait_time_seconds": 1,  # long polling, short enough that a stopping worker stops soon
        "polling_interval": 0.1,
    }


def sentinel_options(url: str, settings: Settings) -> dict:
    """The transport options kombu's and Celery's Sentinel transports need for `url` (the master's
    name; the sentinels' password): none unless it is a `sentinel://` URL. Raises ValueError for a
    malformed one, so that a process stops at start saying what is wrong with it."""
    if not is_sentinel(url):
        return {}
    parse_sentinel_url(url)
    options: dict = {"master_name": settings.redis_sentinel_master}
    if settings.redis_sentinel_password:
        options["sentinel_kwargs"] = {"password": settings.redis_sentinel_password}
    return options


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
        # Off unless asked for, as in Celery: three fanout PUBLISHes a batch were ~40% of a worker
        # main process's CPU (docs/benchmarks.md). Flower turns them on in every worker while it
        # runs (its `enable_events` control command, every 5 s), so it still sees every batch.
        "worker_send_task_events": settings.task_events,
        # No `task-sent` event per publish: it doubled the CPU of publishing a batch (a fanout PUBLISH
        # with its own JSON, ~0.5 ms a batch on the worker releasing the next one; bench/load.py).
        "task_send_sent_event": False,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport_options(settings),
        "worker_hijack_root_logger": False,
        "result_backend_transport_options": sentinel_options(settings.redis_url, settings),
    }


def make_celery(settings: Settings, include: list[str] | None = None) -> Celery:
    """A Celery app configured for Batchery."""
    celery = Celery("batchery", include=include or [])
    celery.conf.update(celery_config(settings))
    return celery


def public_queue_url(settings: Settings, queue: str = "") -> str:
    """The broker queue `queue` (default: the default queue) as shown in job specs (`sqs_url`):
    scheme, host and queue, no credentials."""
    queue = queue or settings.queue
    if is_sqs(settings):
        return f"sqs://{settings.sqs_region}/{settings.sqs_queue_prefix}{queue}"
    url = urlsplit(settings.broker.split(";")[0])  # a Sentinel URL: its first sentinel's address
    host = url.hostname or ""
    if url.port:
        host = f"{host}:{url.port}"
    return f"{url.scheme}://{host}/{queue}"


def consumed_queues(settings: Settings) -> list[str]:
    """The broker queues a worker consumes: those of BATCHERY_QUEUES and their control queues
    (BATCHERY_LANE=all), or only the control queues (BATCHERY_LANE=control)."""
    controls = [control_queue(queue) for queue in settings.served_queues]
    if settings.lane == "control":
        return controls
    return [*settings.served_queues, *controls]

"""The Celery app the workers run (`celery -A workers worker`), after Flask's `celery_init_app`."""

from __future__ import annotations

import redis
from celery import signals

from app.broker import is_sqs, make_celery
from app.config import Settings
from app.joblog import JobLog, configure_process_logging
from workers import oom, redis_restore, sqs_restore

settings = Settings.from_env()
celery = make_celery(settings, include=["workers.tasks"])
if is_sqs(settings):
    sqs_restore.install()
else:
    redis_restore.install()
signals.worker_ready.connect(oom.on_worker_ready)  # the main process: where lost pool processes are seen


@signals.setup_logging.connect
def _setup_logging(loglevel: str | int | None = None, **kwargs: object) -> None:
    """Batchery's logging instead of Celery's: JSON lines, and per-job logs in Redis."""
    job_log = JobLog(redis.Redis.from_url(settings.redis_url))
    configure_process_logging(job_log, loglevel or "INFO", background=True)

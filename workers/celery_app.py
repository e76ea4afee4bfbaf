"""The Celery app the workers run (`celery -A workers worker`), after Flask's `celery_init_app`."""

from __future__ import annotations

from app.broker import is_sqs, make_celery
from app.config import Settings
from workers import sqs_restore

settings = Settings.from_env()
celery = make_celery(settings, include=["workers.tasks"])
if is_sqs(settings):
    sqs_restore.install()

"""Batchery's workers: the Celery app, the batch and finalizer tasks, the predictor runtime."""

from workers.celery_app import celery

__all__ = ["celery"]

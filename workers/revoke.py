"""Revoked batch tasks, seen in the worker's main process (Celery's `task_revoked` signal), are
counted as failed attempts in the job store (app/jobs/revocation.py)."""

from __future__ import annotations

import logging
import threading

from celery import signals

from app.config import Settings
from app.jobs.revocation import count_revoked, how_revoked
from app.jobs.services import Services
from app.model.wire import RUN_BATCH

log = logging.getLogger(__name__)

_settings: Settings | None = None
_celery: object | None = None
_services: Services | None = None
_lock = threading.Lock()


def use(settings: Settings, celery: object) -> None:
    """Count revokes in the job store and broker the settings name (connected on the first one)."""
    global _settings, _celery
    _settings, _celery = settings, celery


def services() -> Services:
    """The main process's own connections (a pool process's are not this process's). Raises
    RuntimeError before `use`."""
    global _services
    if _settings is None:
        raise RuntimeError("workers.revoke.use() was not called: no job store to count revokes in")
    with _lock:
        if _services is None:
            _services = Services.build(_settings, _celery)
    return _services


@signals.task_revoked.connect
def on_task_revoked(
    sender: object = None,
    request: object = None,
    terminated: bool = False,
    signum: object = None,
    expired: bool = False,
    **kwargs: object,
) -> None:
    """A revoked `run_batch`: counted in a thread, so that Celery's main loop never waits on Redis."""
    if getattr(sender, "name", None) != RUN_BATCH or request is None:
        return
    args = list(getattr(request, "args", None) or [])
    if len(args) < 3:
        return
    generation = args[3] if len(args) > 3 else (getattr(request, "kwargs", None) or {}).get("generation", 0)
    how = how_revoked(terminated, signum, expired)
    job_id, batch_id, body = str(args[0]), str(args[1]), str(args[2])
    # terminated: the delivery had begun; discarded (or expired) before it started: it had not
    began = bool(terminated)
    thread = threading.Thread(
        target=_count, args=(job_id, batch_id, body, int(generation), began, how), name="revoked", daemon=True
    )
    thread.start()


def _count(job_id: str, batch_id: str, body: str, generation: int, began: bool, how: str) -> None:
    try:
        count_revoked(services(), job_id, batch_id, body, generation, began, how)
    except Exception:  # a thread of the worker's main process: log it, never stop the worker
        log.exception("job %s: batch %s: could not count its revoked task", job_id, batch_id)

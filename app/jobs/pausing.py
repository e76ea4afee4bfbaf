"""Pausing and resuming a job: while it is paused no batch of it starts, and a resume goes on
exactly where it stopped.

The job store does the work in one Lua call each (app/store/lua/pause.lua, resume.lua): a pause
holds every batch delivered while it lasts (neither started nor counted) and sets the job's
deadline aside; a resume gives the deadline back later by the time paused, and hands this module
the held batches to publish again and the batches its refilled `workers` window released.
"""

from __future__ import annotations

import logging

from app.errors import JobNotFound, JobNotRunning
from app.jobs.services import Services
from app.jobs.submission import follow
from app.model import status
from app.model.job import now
from app.store.job_store import Resumed
from app.store.joblog import for_job

log = logging.getLogger(__name__)


def pause(services: Services, spec: dict) -> str:
    """Pause a job in progress (a paused one stays as it is); its status now, `status_paused`.

    Raises JobNotRunning (400) if the job ended, saying with which status; JobNotFound if it is gone.
    """
    changed, current = services.store.pause(spec, now())
    _check_in_progress(spec, current, "paused")
    if changed:
        with for_job(spec["api_name"], spec["job_id"], services.job_log):
            log.info("job paused: no batch of it starts until it is resumed; batches running finish")
    return current


def resume(services: Services, spec: dict) -> str:
    """Resume a paused job (a job in progress that is not paused stays as it is); its status now.

    Raises JobNotRunning (400) if the job ended, saying with which status; JobNotFound if it is gone.
    """
    resumed = services.store.resume(spec, now())
    _check_in_progress(spec, resumed.status, "resumed")
    if not resumed.changed:
        return resumed.status
    with for_job(spec["api_name"], spec["job_id"], services.job_log):
        log.info("job resumed: %d batches delivered while it was paused run now", len(resumed.held))
        _publish(services, spec, resumed)
        if resumed.status == status.ENQUEUING:
            _resume_enqueuer(services, spec)
    return resumed.status


def _check_in_progress(spec: dict, current: str, verb: str) -> None:
    if not current:
        raise JobNotFound(f"job {spec['job_id']} does not exist for api {spec['api_name']}")
    if status.is_final(current):
        raise JobNotRunning(f"job {spec['job_id']} cannot be {verb}: it already ended with {current}")


def _publish(services: Services, spec: dict, resumed: Resumed) -> None:
    """Publish the held batches again and what the window released. The store noted them as
    unpublished first: if the broker refuses now, the watchdog publishes them again within
    BATCHERY_UNPUBLISHED_SECONDS, so the resume stands and is not answered as failed."""
    store, dispatcher = services.store, services.dispatcher
    try:
        if resumed.held:
            dispatcher.republish_batches(spec["job_id"], resumed.held, queue=spec.get("queue", ""))
            store.published(spec, [entry for _, entry in resumed.held])
        follow(dispatcher, store, spec, resumed.outcome)
    except Exception:  # any broker's error: the watchdog publishes them again
        log.warning("the broker did not take the resumed batches; the watchdog publishes them again", exc_info=True)


def _resume_enqueuer(services: Services, spec: dict) -> None:
    """An S3 job paused before its enqueuer finished: its enqueuer may have stopped on seeing the job
    paused, so a new one resumes from the cursor (one that still holds the lease carries on)."""
    store = services.store
    source, _ = store.enqueue_state(spec["job_id"])
    if source is not None and not store.lease_held(spec["job_id"]):
        services.dispatcher.publish_enqueuer(spec["job_id"], queue=spec.get("queue", ""))

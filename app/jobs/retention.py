"""The retention sweep, run by the watchdog, and the 404 of an expired job.

An ended job's keys expire by themselves (app/store/retention.py); each sweep takes the jobs
expired since out of the listings and drops their references to their code, forgets tombstones
older than another retention period, and removes code no deployed API nor kept job runs.
"""

from __future__ import annotations

import datetime
import logging

from app.errors import ApiNotFound, JobNotFound
from app.jobs.services import Services
from app.store import keys
from app.store.retention import Retention

log = logging.getLogger(__name__)

# Code seen deployed this recently is kept whatever its references: a submission reading the API
# (and about to add its job's reference) may race a redeploy. Shorter with a shorter retention.
CODE_GRACE_SECONDS = 600.0


def sweep(services: Services, at: float) -> list[str]:
    """One retention pass at time `at`: the ids of the jobs it found expired. Raises redis-py's errors."""
    retention = Retention(services.redis)
    seconds = services.settings.job_retention_seconds
    expired = retention.expire_due(at)
    retention.prune_tombstones(at - seconds)
    removed = retention.collect_code(_deployed_code(services), at, min(CODE_GRACE_SECONDS, seconds))
    if expired or removed:
        log.info("retention: %d ended jobs expired, %d stored code removed", len(expired), len(removed))
    return expired


def _deployed_code(services: Services) -> set[str]:
    """The code keys of the APIs deployed now."""
    found: set[str] = set()
    for name in services.registry.names():
        try:
            found.update(keys.code_keys(services.registry.get(name)))
        except ApiNotFound:  # undeployed meanwhile: nothing of it is deployed
            continue
    return found


def job_not_found(services: Services, api_name: str, job_id: str) -> JobNotFound:
    """The 404 for a job id the store does not have: saying when it expired, if its tombstone is
    still kept, else that there is no such job."""
    expired_at = Retention(services.redis).expired_at(job_id)
    if expired_at is None:
        return JobNotFound(f"job {job_id} does not exist for api {api_name}")
    when = datetime.datetime.fromtimestamp(expired_at, datetime.UTC).isoformat(timespec="seconds")
    kept = services.settings.job_retention_seconds
    return JobNotFound(
        f"job {job_id} expired on {when.replace('+00:00', 'Z')}: ended jobs are kept "
        f"BATCHERY_JOB_RETENTION_SECONDS ({_duration(kept)})"
    )


def _duration(seconds: int) -> str:
    """`seconds` in words, in the largest unit that divides it: `14 days`, `1 hour`, `90 seconds`."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}" + ("s" if count != 1 else "")
    return f"{seconds} second" + ("s" if seconds != 1 else "")

"""Retention: an ended job, and all that names it, is removed BATCHERY_JOB_RETENTION_SECONDS after its end.

A fleet running 10,000 jobs a day kept every one of them for ever. Now the call that ends a job
(`end_job` in app/store/lua/common.lua) gives each of its keys (app/store/keys.py `job_keys`) a
TTL of the job's retention, and its Idempotency-Key record no longer one, so Redis removes them by
itself, with no sweep. What a TTL cannot reach is left to a sweep (the watchdog's, in the API
processes): the job's member of its API's listing (sorted sets of all jobs), its count in the
API's status counts, its references to its code, its dead letters at the head of a Redis
dead-letter list, and any key written after it ended. `end_job` notes each ended job in a sorted
set scored by when it expires, so the sweep reads only the jobs due (never all jobs), and one
Lua call per job does the rest, once, whichever API process sweeps. A tombstone (job id -> when
it expired) is kept for another retention period, so the id answers 404 saying it expired.

Code (a project's files, `keys.code`, and its packed folder, `keys.project`) is counted: each job
adds a reference to the code it runs when it is created and the sweep takes it off when the job
expires. Code no kept job runs and no deployed API was seen with for a grace period is removed.
"""

from __future__ import annotations

import json
from typing import cast

import redis

from app.store import keys
from app.store.replies import as_text
from app.store.scripts import lua_file

# Tombstones kept at most, whatever their age: a bound on the memory they take (~100 bytes each).
MAX_TOMBSTONES = 100_000


class Retention:
    """Removes expired jobs from what still names them, and code no one runs any more."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._expire = client.register_script(lua_file("expire_job"))
        self._forget = client.register_script(lua_file("forget_code"))

    def expire_due(self, now: float, limit: int = 1000) -> list[str]:
        """Take the jobs whose keys expired by `now` (at most `limit`) out of the listings, the status
        counts, the webhook outbox and their code's references, delete what is left of them, and keep
        a tombstone of each; the ids of those this call took (another sweep may take some)."""
        due = cast(
            list, self.redis.zrangebyscore(keys.retention_ended(), "-inf", now, start=0, num=limit, withscores=True)
        )
        pipe = self.redis.pipeline(transaction=False)
        job_ids = []
        for member, expired_at in due:
            job_id, api_name, final, code_refs, idempotency, dead_letters = json.loads(member)
            job_ids.append(job_id)
            shared = [
                keys.retention_ended(),
                keys.retention_expired(),
                keys.code_refs(),
                keys.webhook_outbox(),
                keys.api_jobs(api_name),
                keys.api_active(api_name),
                keys.api_statuses(api_name),
                keys.dead_letters(dead_letters) if dead_letters else keys.dead_letters(""),
            ]
            own = keys.job_keys(job_id) + ([idempotency] if idempotency else [])
            args = [member, job_id, repr(expired_at), final, keys.job(""), *code_refs.split()]
            self._expire(keys=shared + own, args=args, client=pipe)
        taken = pipe.execute() if due else []
        return [job_id for job_id, took in zip(job_ids, taken, strict=True) if took]

    def prune_tombstones(self, before: float) -> None:
        """Forget the tombstones of jobs that expired before `before`, and all but the newest
        MAX_TOMBSTONES."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(keys.retention_expired(), "-inf", f"({before!r}")
        pipe.zremrangebyrank(keys.retention_expired(), 0, -MAX_TOMBSTONES - 1)
        pipe.execute()

    def expired_at(self, job_id: str) -> float | None:
        """When a job expired, if its tombstone is still kept; None otherwise."""
        found = self.redis.zscore(keys.retention_expired(), job_id)
        return None if found is None else float(found)

    def collect_code(self, deployed: set[str], now: float, grace_seconds: float) -> list[str]:
        """Remove stored code that no kept job runs, and that no deployed API was seen with in the
        last `grace_seconds` (`deployed`: the code keys of the APIs deployed now); the keys removed."""
        if deployed:
            self.redis.zadd(keys.code_stored(), dict.fromkeys(deployed, now))
        cutoff = now - grace_seconds
        stale = [
            as_text(key) for key in cast(list, self.redis.zrangebyscore(keys.code_stored(), "-inf", f"({cutoff!r}"))
        ]
        removed = []
        for key in stale:
            if key not in deployed and self._forget(
                keys=[keys.code_refs(), keys.code_stored(), key], args=[repr(cutoff)]
            ):
                removed.append(key)
        return removed


def note_idempotency(client: redis.Redis, job_id: str, record: str) -> None:
    """Tie an Idempotency-Key record (its key) to the job it created, so that it expires with the job,
    no later; a job that ended already cuts the record's TTL to its own now."""
    job = keys.job(job_id)
    if not client.exists(job):
        return
    client.hset(job, "idempotency", record)  # end_job reads it from now on (keep_ended in common.lua)
    pipe = client.pipeline(transaction=False)
    pipe.ttl(job)
    pipe.ttl(record)
    job_ttl, record_ttl = pipe.execute()
    if job_ttl >= 0 and (record_ttl < 0 or record_ttl > job_ttl):  # it ended before the HSET: it has a TTL
        client.expire(record, max(job_ttl, 1))

"""A batch's task revoked by an operator (Flower, `celery control revoke`, with or without
`--terminate`): a failed attempt, said in the job's log.

Celery acks a revoked message without running it (or kills the pool process running it, with
`terminate`), and Batchery's job store never heard of it: the job went on running with the batch in
flight until the watchdog took its message for lost, two minutes later, and ran it again, with
nothing in the job's log. Now the worker's main process, which sees every revoke (Celery's
`task_revoked` signal, workers/revoke.py), counts the revoked delivery as a failed attempt, as an
exception in `predict` is: the batch runs again (a new message, whose id Celery has not revoked)
while the job's policy has attempts left (`max_receive_count` with a dead-letter queue), else it
fails for good and goes to the dead-letter queue. To stop a whole job, use `DELETE`.
"""

from __future__ import annotations

import json
import logging

from app.jobs.services import Services
from app.jobs.submission import follow
from app.model.job import now
from app.model.wire import split_backlog_entry
from app.sources.batches import payload
from app.store import batch_errors
from app.store.joblog import for_job

log = logging.getLogger(__name__)


def how_revoked(terminated: bool, signum: object, expired: bool) -> str:
    """The revoke in words, for the job's log."""
    if expired:
        return "its message expired before it started"
    if terminated:
        return f"revoked while it ran, its process terminated (signal {signum})"
    return "revoked before it started"


def count_revoked(
    services: Services, job_id: str, batch_id: str, body: str, generation: int, terminated: bool, how: str
) -> str:
    """Count a revoked delivery of a batch as a failed attempt, say so in the job's log, and run
    the batch again or fail it for good, per the job's policy. Returns what was done: `again`,
    `failed` or `ignored`. Raises redis-py's and the broker's errors."""
    found = services.store.spec_and_api(job_id)
    if found is None:
        return "ignored"
    spec, _ = found
    with for_job(spec["api_name"], job_id, services.job_log):
        revoked = services.store.revoked(spec, batch_id, generation, terminated, now())
        if revoked.entry:  # a bundle's message: the batch it carried is the one its revoke ended
            batch_id, body = split_backlog_entry(revoked.entry)
        task = f"batch {batch_id}: its task was {how} (Flower or `celery control revoke`)"
        if revoked.action == "ignored":
            log.info("%s; nothing to do: %s", task, revoked.why)
        elif revoked.action == "again":
            log.warning("%s: attempt %d counted as failed; it runs again", task, revoked.attempt)
            services.dispatcher.republish_batches(job_id, revoked.again, queue=spec.get("queue", ""))
            services.store.published(spec, [entry for _, entry in revoked.again])
        else:
            error = f"its task was {how}"
            log.error("%s: attempt %d counted as failed; no attempt left: failed for good", task, revoked.attempt)
            _fail_for_good(services, spec, batch_id, body, error)
    return revoked.action


def _fail_for_good(services: Services, spec: dict, batch_id: str, body: str, error: str) -> None:
    """As a batch that failed for good in its worker: a dead letter, its error kept for the
    dashboard, counted (`dead`: its failed attempt is counted already), and what that releases."""
    job_id = spec["job_id"]
    dlq = spec.get("sqs_dead_letter_queue")
    if dlq:
        letter = {"job_id": job_id, "api_name": spec["api_name"], "batch_id": batch_id, "error": error}
        services.dead_letters.send(
            dlq["arn"], {**letter, "payload": _items(body), "traceback": "", "failed_time": now()}
        )
    batch_errors.note(services.redis, job_id, batch_id, error)
    outcome = services.store.record(spec, batch_id, "dead", 0.0, "", now())
    follow(services.dispatcher, services.store, spec, outcome)


def _items(body: str) -> list | dict:
    """The batch's items for its dead letter; its S3 ranges if they cannot be read."""
    try:
        return payload(body)
    except Exception as err:  # noqa: BLE001 - the letter is sent all the same
        log.warning("its dead letter holds its S3 ranges, not its items: %s", err)
        return json.loads(body)

"""Submitting a job: validate, slice into batches, store, release the first window."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from app.broker.dispatch import Dispatcher, too_large
from app.errors import BrokerUnavailable, InvalidRequest
from app.jobs.batching import item_batches
from app.model import status
from app.model.job import build_spec, now
from app.model.queues import api_queue
from app.model.wire import entry_batch_id
from app.sources import s3
from app.store.connection import replicated
from app.store.job_store import JobStore, Outcome
from app.store.joblog import JobLog, for_job
from app.store.registry import Registry

log = logging.getLogger(__name__)


TOO_LARGE_FOR_QUEUE = (
    "a batch's message is over the SQS queue's MaximumMessageSize: Celery's encoding makes a message "
    "1.8 to 3.6 times its batch, so a 256 KiB batch needs the queue's MaximumMessageSize at 1 MiB "
    "(the SQS maximum, and the default of new queues); raise it, or use a smaller batch_size"
)

# A dry run's last line, without a newline after it, byte for byte as Cortex answered.
VALIDATIONS_PASSED = "validations passed"

# The cursor of an item_list job once all its batches are in the backlog.
ITEMS_STORED = {"items_stored": True}


class Submitter:
    """Turns a submission into a stored job whose first batches are on the broker."""

    def __init__(
        self,
        registry: Registry,
        store: JobStore,
        dispatcher: Dispatcher,
        dead_letters,
        job_log: JobLog,
        queue_url: str,
        queue_urls: Callable[[str], str] | None = None,
        default_queue: str = "",
    ):
        """`queue_url`: the default queue's URL; `queue_urls`: a queue's URL by its name (for the
        APIs that name their queue); `default_queue`: the queue of an API that names none."""
        self.registry = registry
        self.store = store
        self.dispatcher = dispatcher
        self.dead_letters = dead_letters
        self.job_log = job_log
        self.queue_url = queue_url
        self.queue_urls = queue_urls
        self.default_queue = default_queue

    def _spec(self, api: dict, submission: dict) -> dict:
        """A new job's spec, recording the queue its batches run on (the API's, `gpu`, or the default)."""
        queue = api_queue(api, self.default_queue)
        url = self.queue_urls(queue) if self.queue_urls and queue else self.queue_url
        spec = build_spec(api, submission, url, now())
        if queue:
            spec["queue"] = queue
        return spec

    def submit(self, api: dict, submission: dict, dry_run: bool = False) -> dict | Iterator[str]:
        """Create a job of `api` from a validated submission; for a dry run only check its input and
        return the text answer's lines.

        Raises InvalidRequest, BrokerUnavailable.
        """
        if submission.get("sqs_dead_letter_queue"):
            try:
                self.dead_letters.check(submission["sqs_dead_letter_queue"]["arn"])
            except ValueError as err:
                raise InvalidRequest(f"sqs_dead_letter_queue.arn: {err}") from None
        if "item_list" in submission:
            answer = self._submit_items(api, submission, dry_run)
        else:
            answer = self._submit_s3(api, submission, dry_run)
        if isinstance(answer, dict):  # a job was created: on a replica before its id is answered
            replicated(self.store.redis)
        return answer

    def _submit_items(self, api: dict, submission: dict, dry_run: bool) -> dict | Iterator[str]:
        items = submission["item_list"]["items"]
        entries = item_batches(items, submission["item_list"]["batch_size"])
        if dry_run:
            return iter([VALIDATIONS_PASSED])
        spec = self._create(api, submission)
        with self._publishing(spec), for_job(spec["api_name"], spec["job_id"], self.job_log):
            log.info("enqueued %d items in %d batches", len(items), len(entries))
            self._enqueue(spec, entries)
        return spec

    def _submit_s3(self, api: dict, submission: dict, dry_run: bool) -> dict | Iterator[str]:
        kind = "file_path_lister" if "file_path_lister" in submission else "delimited_files"
        source = dict(submission[kind], kind=kind)
        selected = _selected_objects(kind, source)
        if dry_run:
            return _dry_run_lines(selected)
        spec = self._create(api, submission, source)
        with self._publishing(spec), for_job(spec["api_name"], spec["job_id"], self.job_log):
            log.info("enqueuing %s from %s in the background", kind, ", ".join(source["s3_paths"]))
            self.dispatcher.publish_enqueuer(spec["job_id"], queue=spec.get("queue", ""))
        return spec

    def _create(self, api: dict, submission: dict, source: dict | None = None) -> dict:
        spec = self._spec(api, submission)
        self.store.create(spec, api, now(), source)
        return spec

    @contextmanager
    def _publishing(self, spec: dict) -> Iterator[None]:
        try:
            yield
        except Exception as err:  # the broker refused: say so on the job, and to the client
            log.exception("job %s: enqueuing failed", spec["job_id"])
            if too_large(err):  # the job's fault (with this queue), not an outage: a 400
                message = f"{TOO_LARGE_FOR_QUEUE} ({err})"
                self.store.end(spec, status.ENQUEUE_FAILED, message, now())
                raise InvalidRequest(f"job {spec['job_id']} could not be enqueued: {message}") from None
            self.store.end(spec, status.ENQUEUE_FAILED, f"could not publish to the broker: {err}", now())
            raise BrokerUnavailable(f"job {spec['job_id']} could not be enqueued: {err}") from None

    def submit_batches(self, api: dict, submission: dict, entries: list[str], spec_fields: dict) -> dict:
        """Create a job of `api` whose batches are the given backlog entries, as they are (a retry's:
        app/jobs/retry.py), its spec holding `spec_fields` too. Raises InvalidRequest, BrokerUnavailable."""
        spec = self._spec(api, submission)
        spec.update(spec_fields)
        self.store.create(spec, api, now())
        with self._publishing(spec), for_job(spec["api_name"], spec["job_id"], self.job_log):
            log.info("enqueued %d batches", len(entries))
            self._enqueue(spec, entries)
        replicated(self.store.redis)  # on a replica before its id is answered
        return spec

    def _enqueue(self, spec: dict, entries: list[str]) -> None:
        # The cursor marks every batch stored: if this process dies before `enqueued`, the watchdog
        # finishes the job's enqueuing instead of failing it.
        stored = self.store.append(spec, entries, now(), cursor=json.dumps(ITEMS_STORED))
        # a batch too large for the broker is the client's to hear about, as a 400 (`_publishing`)
        follow(self.dispatcher, self.store, spec, Outcome(released=stored.released), refuse_too_large=True)
        follow(self.dispatcher, self.store, spec, self.store.enqueued(spec, now()), refuse_too_large=True)


def known_total(store: JobStore, job_id: str, state: dict) -> int | None:
    """The job's batch count if it is final, else None: an S3 job still enqueuing has more to come.

    An item_list job stores all its batches in one call, whose release can start a batch before
    the job leaves `status_enqueuing`: its count is final once its cursor says so (ITEMS_STORED).
    """
    if state["status"] != status.ENQUEUING:
        return state["total"]
    source, cursor = store.enqueue_state(job_id)
    return state["total"] if source is None and cursor == ITEMS_STORED else None


def _selected_objects(kind: str, source: dict) -> Iterator[s3.S3Object]:
    """The objects an S3 source selects, checked to be at least one; raises InvalidRequest."""
    try:
        s3.distinct_prefixes(source["s3_paths"])
    except ValueError as err:
        raise InvalidRequest(f"{kind}.s3_paths: {err}") from None
    for field in ("includes", "excludes"):
        try:
            s3.check_globs(source[field])
        except ValueError as err:
            raise InvalidRequest(f"{kind}.{field}: {err}") from None
    objects = (obj for _, obj in s3.matching(source["s3_paths"], source["includes"], source["excludes"]))
    try:
        first = next(objects, None)
    except s3.S3Error as err:
        raise InvalidRequest(str(err)) from None
    if first is None:
        raise InvalidRequest("no s3 files match search criteria")
    return itertools.chain([first], objects)


def _dry_run_lines(objects: Iterator[s3.S3Object]) -> Iterator[str]:
    # Streamed: a prefix of a million keys is listed page by page, never held whole.
    try:
        for obj in objects:
            yield obj.url + "\n"
    except s3.S3Error as err:
        yield f"error: {err}\n"
        return
    yield VALIDATIONS_PASSED


def follow(
    dispatcher: Dispatcher, store: JobStore, spec: dict, outcome: Outcome, refuse_too_large: bool = False
) -> None:
    """Do what a store call asked: publish released batches, then the finalizer if it was claimed,
    then say so to the store (should this process die before that, the watchdog publishes them
    again after `unpublished_seconds`). Raises the broker's error if it refuses a message; a batch
    too large for it fails for good, unless `refuse_too_large` (then that error is raised too)."""
    if not outcome.released and not outcome.finalize:
        return
    queue = spec.get("queue", "")  # "": the dispatcher's default queue (a job from before queues)
    refused = dispatcher.publish_batches(spec["job_id"], outcome.released, refuse_too_large, queue=queue)
    if outcome.finalize:
        dispatcher.publish_finalizer(spec["job_id"], queue=queue)
    store.published(spec, outcome.released, outcome.finalize)
    for entry in refused:  # published again, it would be refused again, for ever: the job would hang
        batch_id = entry_batch_id(entry)
        log.error("batch %s: failed for good without running: %s", batch_id, TOO_LARGE_FOR_QUEUE)
        follow(dispatcher, store, spec, store.record(spec, batch_id, "dead", 0.0, "broker", now()))

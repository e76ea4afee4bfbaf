"""The Celery tasks: one per batch, and one finalizer per job."""

from __future__ import annotations

import json
import logging
import time
import traceback
import uuid
from functools import partial
from typing import cast

import redis
from celery import signals

from app.jobs.completion import completed_job
from app.jobs.enqueuer import Enqueuer
from app.jobs.output import OutputStore
from app.jobs.services import Services
from app.jobs.submission import follow, known_total
from app.model import status
from app.model.job import iso, now, retry_limits
from app.model.wire import ENQUEUE_JOB, FINALIZE_JOB, RUN_BATCH, backlog_entry, split_backlog_entry
from app.sources.batches import payload
from app.store import batch_errors, keys
from app.store.connection import replicated, store_client
from app.store.job_store import Delivery, Outcome
from app.store.joblog import NOT_IN_JOB_LOG, flush_lines, for_job, run_with_lines
from app.store.retries import RetryStore
from workers import late_outcomes, liveness
from workers.celery_app import celery, settings
from workers.heartbeat import heartbeat
from workers.lru import Lru
from workers.output import write_batch_output
from workers.projects import ProjectCache
from workers.runtime import PredictorCache, PredictorError, load_class
from workers.visibility import kept_invisible

log = logging.getLogger(__name__)

_services: Services | None = None
# the predictors' code is the code deployed with their API, kept in Redis (app/store/code.py)
# and the rest of their project (models, data), fetched from Redis to this host's disk (workers/projects.py)
_projects = ProjectCache(
    settings.project_cache, settings.project_cache_seconds, read=lambda project_id: _project_blob(project_id)
)
_predictors = PredictorCache(
    settings.predictor_cache,
    deployed=lambda code_id: services().registry.code(code_id),
    projects=_projects,
    memory_bytes=settings.predictor_memory_bytes,
)
# A job's spec and API never change once it is stored, so a process reads them once per job, not
# once per batch (the JSON of a spec with a large config is parsed once too).
SPEC_CACHE = 64
_specs: Lru[str, tuple[dict, dict]] = Lru(SPEC_CACHE)


class BatchFailed(Exception):
    """A batch failed for good (it is counted, and dead-lettered if the job has a queue)."""


def services() -> Services:
    """This worker process's connections (built after the fork, once)."""
    global _services
    if _services is None:
        _services = Services.build(settings, celery, patient=True)
    return _services


def _project_blob(project_id: str) -> bytes | None:
    """A deployed project's blob, as the deploy stored it; None if the job store has none."""
    return cast(bytes | None, services().redis.get(keys.project(project_id)))


@signals.worker_ready.connect
def _clean_project_cache(**kwargs: object) -> None:
    """The worker's start: versions of projects unused for BATCHERY_PROJECT_CACHE_SECONDS go."""
    _projects.clean()


@signals.worker_ready.connect
def _keep_pool_processes_alive(sender: object = None, **kwargs: object) -> None:
    """The worker's main process renews its pool processes' ownership of their batches, from a
    thread that runs even while a predictor holds its process's GIL (workers/liveness.py)."""
    timeout = 5  # a beat must not hang on a hung Redis: the next one tries again
    client = store_client(settings.redis_url, settings, socket_timeout=timeout, socket_connect_timeout=timeout)
    liveness.start_renewing(client, settings.lost_seconds, getattr(sender, "pool", None))


def spec_and_api(job_id: str) -> tuple[dict, dict] | None:
    """A job's spec and API as submitted, read from the store once per process (they never change)."""
    found = _specs.get(job_id)
    if found is not None:
        return found
    found = services().store.spec_and_api(job_id)
    return None if found is None else _specs.put(job_id, found)


def output_store() -> OutputStore:
    """Where jobs with `output: {store: redis}` keep their predictions (the job store's Redis)."""
    return OutputStore(services().redis, settings.output_store_bytes)


def process_id() -> str:
    """This pool process, as counted in `worker_counts` (and said alive while it lives)."""
    return liveness.this_process(services().redis, settings.lost_seconds)


def job_spec_fields(spec: dict) -> dict:
    """The fields of Cortex's `job_spec` that the job's stored spec lacks, as they are when the
    predictor is created: `total_batch_count` (None while an S3 input is still being enqueued:
    batches start before the enqueuer has counted them all) and `start_time`."""
    state = services().store.state(spec["job_id"], spec["api_name"], now())
    if state is None:
        return {}
    total = known_total(services().store, spec["job_id"], state)
    return {"total_batch_count": total, "start_time": iso(state.get("start"))}


# Request: the worker's main process tells a pool process killed for memory from other SIGKILLs.
@celery.task(
    name=RUN_BATCH,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    Request="workers.oom:BatchRequest",
)
def run_batch(self, job_id: str, batch_id: str, body: str, generation: int = 0) -> list[str] | None:
    """Run `predict` on one batch of a job, counting the delivery and its outcome, then on the
    job's next batches while they are short (a bundle). Returns the ids of the batches it ran:
    the task's result in its events, so Flower shows which batches a message carried."""
    found = spec_and_api(job_id)
    if found is None:
        log.warning("job %s: batch %s belongs to no known job; dropped", job_id, batch_id)
        return None
    spec, api = found
    late_outcomes.record_kept()  # outcomes this process holds from a store outage, before a new batch begins
    with kept_invisible(self.request, settings.sqs_visibility_timeout), for_job(spec["api_name"], job_id):
        return Bundle(spec, api, batch_id).run(self, body, generation)


class Bundle:
    """The batches one message runs, one after the other: its own, then, while batches are short,
    the job's next ones, each taken by the store in the call that records the one before
    (`take_next`, app/store/lua/common.lua). Each is a delivery of its own: its own BEGIN checks,
    outcome, retries, dead letter and log lines."""

    def __init__(self, spec: dict, api: dict, head: str):
        self.spec, self.api, self.head = spec, api, head  # head: the batch the message was sent for
        self.started = time.perf_counter()
        self.ran: list[str] = []

    def run(self, task, body: str, generation: int) -> list[str]:
        """Run the message's batch and the ones taken after it; the ids of those that started."""
        batch: BatchRun | None = BatchRun(self.spec, self.api, self.head, body, generation, bundle=self)
        while batch is not None:
            batch = batch.run(task)
        return self.ran

    def wants_more(self) -> bool:
        """Whether one more batch, as long as the mean of those run so far, still fits in
        BATCHERY_BUNDLE_SECONDS: so a job of 1 s batches runs one a message, as before bundles, and
        a message never holds its process much longer than the setting."""
        if settings.bundle_seconds <= 0 or not self.ran:
            return False
        elapsed = time.perf_counter() - self.started
        return elapsed + elapsed / len(self.ran) <= settings.bundle_seconds

    def taken(self, entry: str) -> BatchRun:
        """The run of the next batch, which the store released and began for this process."""
        batch_id, body = split_backlog_entry(entry)
        return BatchRun(self.spec, self.api, batch_id, body, 0, bundle=self, begun=True)


class BatchRun:
    """One delivery of one batch."""

    def __init__(
        self,
        spec: dict,
        api: dict,
        batch_id: str,
        body: str,
        generation: int = 0,
        bundle: Bundle | None = None,
        begun: bool = False,
    ):
        self.spec, self.api, self.batch_id, self.body = spec, api, batch_id, body
        self.generation = generation
        self.bundle = bundle or Bundle(spec, api, batch_id)
        self.begun = begun  # taken by the store for the bundle: its (first) delivery is counted already
        self.store = services().store
        self.proc = process_id()

    def run(self, task) -> BatchRun | None:
        """Run the delivery: skip it, dead-letter it, or predict and count the outcome. Returns the
        bundle's next batch to run, if the store handed one over. Raises Celery's Retry for a
        failed attempt of the message's own batch, BatchFailed for a batch that failed for good."""
        ready = _predictors.cached(self.spec["job_id"])  # loaded: BEGIN is the last check before predict
        delivery = self._begin(ready)
        if delivery.action == "skip":
            if delivery.reason == "owned":
                log.warning(
                    "batch %s: this message was dropped: another delivery of the batch still runs in a live "
                    "worker process (%s); it is not counted as a delivery",
                    self.batch_id,
                    delivery.owner,
                )
            return None
        if delivery.action == "dead":
            died = delivery.number - 1
            error = f"the worker running delivery {died} died"
            if delivery.oom_kills:
                error = (
                    f"killed for memory: the kernel's OOM killer killed the worker running "
                    f"{delivery.oom_kills} of its {died} deliveries"
                )
            log.error("batch %s: failed for good: %s", self.batch_id, error)
            self._fail_for_good("oom" if delivery.oom_kills else "dead", error)
            raise BatchFailed(f"batch {self.batch_id} failed for good: {error}")
        try:
            predictor = self._predictor()
            starts = predictor is not None and (ready or self.store.proceed(self.spec, self.batch_id, self.proc, now()))
        except Exception as err:  # noqa: BLE001 - Batchery's own error: the job store gone for longer than its outage budget
            # Raised, the batch stayed begun in this live process, never to run, and the job never
            # ended. A failed attempt instead, limited as a dead worker's are (not predict's error):
            # it runs again, and the outcome is kept if the store is down.
            self._failed(task, delivery.number, err, limit=retry_limits(self.spec)[0])
            return None
        if not starts:
            return None
        if not ready:  # loading the predictor is no batch's time: the bundle's clock starts now
            self.bundle.started = time.perf_counter()
        self.bundle.ran.append(self.batch_id)
        log.info("batch %s: started (delivery %d)", self.batch_id, delivery.number)
        try:
            items = payload(self.body)  # reads S3 for delimited_files: not predict's time
            started = time.perf_counter()
            prediction = predictor.predict(items, self.batch_id)
            seconds = time.perf_counter() - started
            # before the outcome is counted: a batch counted as succeeded has its output written
            written = write_batch_output(self.spec, self.batch_id, items, prediction, output_store)
        except Exception as err:  # noqa: BLE001 - any error in user code (or writing its output) is a failed attempt
            self._failed(task, delivery.number, err)
            return None
        log.info("batch %s: succeeded in %.3fs%s", self.batch_id, seconds, f"; {written}" if written else "")
        next_entry = self._record("ok", seconds, bundle=True)
        return self.bundle.taken(next_entry) if next_entry else None

    def _begin(self, ready: bool) -> Delivery:
        """BEGIN's answer for this delivery; a batch the store took for the bundle is begun already."""
        if self.begun:
            return Delivery("run", number=1)
        delivery = self.store.begin(self.spec, self.batch_id, self.proc, now(), self.generation, ready=ready)
        if delivery.carried:  # the message's batch ended before its process died: it carried this one
            self.batch_id, self.generation, self.body = delivery.carried
            log.info("batch %s: runs in the message of batch %s, delivered again", self.batch_id, self.bundle.head)
        return delivery

    def _own_message(self) -> bool:
        """Whether the message being run was sent for this batch (not a batch of its bundle)."""
        return self.batch_id == self.bundle.head and not self.begun

    def _predictor(self):
        loading = not _predictors.cached(self.spec["job_id"])
        if loading:
            log.info("loading the predictor (%s)", self.api["predictor"]["path"])
        try:
            started = time.perf_counter()
            predictor = _predictors.get(self.spec, self.api, partial(job_spec_fields, self.spec))
            if loading:
                log.info("predictor ready in %.1fs", time.perf_counter() - started)
            return predictor
        except PredictorError as err:
            log.error("job %s: %s", self.spec["job_id"], err, exc_info=err)  # where in the user's code
            flush_lines()  # the error before the store's line saying how the job ended
            self.store.end(self.spec, status.WORKER_ERROR, str(err), now())
            return None

    def _failed(self, task, number: int, err: Exception, limit: int | None = None) -> None:
        """Count a failed attempt: run the batch again, or, after `limit` deliveries (by default the
        job's limit for a raising predict), fail it for good. Raises Retry or BatchFailed."""
        log.warning("batch %s: failed (delivery %d)", self.batch_id, number, exc_info=err)
        if number < (limit or retry_limits(self.spec)[1]):
            self._record("retry", 0.0)
            if not self._own_message():  # retried on its own, with a message of its own: the bundle ends
                self._publish_alone()
                return
            raise task.retry(countdown=0, max_retries=None, exc=err)
        error = "".join(traceback.format_exception_only(type(err), err)).strip()
        self._fail_for_good("failed", error, traceback.format_exc())
        # Raised so that Celery (and Flower) show the task as failed; the outcome is already counted.
        raise BatchFailed(f"batch {self.batch_id} failed for good after {number} deliveries: {error}") from err

    def _fail_for_good(self, outcome: str, error: str, trace: str = "") -> None:
        dlq = self.spec.get("sqs_dead_letter_queue")
        if dlq:
            try:
                self._send_dead_letter(dlq["arn"], error, trace)
            except Exception as err:  # noqa: BLE001 - the outcome is recorded all the same (below)
                # Raised, the outcome went unrecorded and the job never ended. The batch is kept
                # with the job's failed batches for a retry job (POST /batch/<api>/<job_id>/retry).
                log.error("batch %s: its dead letter could not be sent to %s: %s", self.batch_id, dlq["arn"], err)
                error = f"{error} (its dead letter could not be sent: {err})"
        batch_errors.note(self.store.redis, self.spec["job_id"], self.batch_id, error)  # the dashboard's dead letters
        self._record(outcome, 0.0)

    def _send_dead_letter(self, arn: str, error: str, trace: str) -> None:
        services().dead_letters.send(
            arn,
            {
                "job_id": self.spec["job_id"],
                "api_name": self.spec["api_name"],
                "batch_id": self.batch_id,
                "payload": self._items_for_letter(),
                "error": error,
                "traceback": trace,
                "failed_time": now(),
            },
        )

    def _items_for_letter(self) -> list | dict:
        """The batch's items, for its dead letter to be replayed: a delimited_files batch's are read
        again (of the version enqueued); its S3 ranges if they cannot be."""
        try:
            return payload(self.body)
        except Exception as err:  # noqa: BLE001 - the letter is sent all the same
            log.warning("batch %s: its dead letter holds its S3 ranges, not its items: %s", self.batch_id, err)
            return json.loads(self.body)

    def _publish_alone(self) -> None:
        """Publish the batch in a message of its own (`<job>.b<batch>.a<generation + 1>`, an id no
        message had: the batch came in another batch's message)."""
        entry = (self.generation, backlog_entry(self.batch_id, self.body))
        services().dispatcher.republish_batches(self.spec["job_id"], [entry], queue=self.spec.get("queue", ""))

    def _record(self, outcome: str, seconds: float, bundle: bool = False) -> str:
        """Count the outcome, with the batch's log lines, in one round trip; with `bundle`, the
        same call takes the bundle's next batch if there is time for one. Returns its backlog
        entry ('' for none). Raises the store's errors (an outcome unanswered is kept to retry)."""
        head = self.bundle.head if bundle else None
        take = bundle and self.bundle.wants_more()
        call = self.store.record_call(self.spec, self.batch_id, outcome, seconds, self.proc, now(), head, take)
        # the batch's log lines go in the same round trip (one fewer a batch: bench/load.py)
        try:
            reply = run_with_lines(self.store.redis, call)
        except late_outcomes.UNANSWERED:
            # the call may have been carried out, its reply lost: the late one gives back what it took
            late_outcomes.keep(partial(self._record_late, outcome, seconds, head), f"batch {self.batch_id}")
            raise
        if isinstance(reply, Exception):
            raise reply
        # the RECORD script's reply, a list (run_with_lines types it `object`: it runs any script)
        parse = Outcome.parse if head is None else Outcome.parse_bundled
        recorded = parse(cast(list, reply))
        follow(services().dispatcher, self.store, self.spec, recorded)
        # before the broker's ack: an outcome lost in a failover, its message acked, would leave
        # the batch in flight until the watchdog found it lost
        kept_through_failover(f"batch {self.batch_id}'s outcome")
        return recorded.next_entry

    def _record_late(self, outcome: str, seconds: float, head: str | None) -> None:
        call = self.store.record_call(self.spec, self.batch_id, outcome, seconds, self.proc, now(), head, take=False)
        reply = call.run(self.store.redis)
        recorded = Outcome.parse(reply) if head is None else Outcome.parse_bundled(reply)
        follow(services().dispatcher, self.store, self.spec, recorded)
        if outcome == "retry":  # the task's retry, which publishes the next delivery, never ran
            entry = (self.generation, backlog_entry(self.batch_id, self.body))
            services().dispatcher.republish_batches(self.spec["job_id"], [entry], queue=self.spec.get("queue", ""))


@celery.task(name=FINALIZE_JOB, bind=True, acks_late=True, reject_on_worker_lost=True)
def finalize_job(self, job_id: str) -> None:
    """Decide a job's final status and run `on_job_complete` once, after its last batch."""
    found = services().store.spec_and_api(job_id)
    if found is None:
        log.warning("job %s: finalizer for no known job; dropped", job_id)
        return
    spec, api = found
    token = self.request.id or uuid.uuid4().hex  # the same on each delivery of this message
    with kept_invisible(self.request, settings.sqs_visibility_timeout), for_job(spec["api_name"], job_id):
        at = now()
        start = services().store.start_finalizing(spec, token, at - settings.lost_seconds, at)
        if start.wait:
            # a delivery of a batch the job already counted still runs: on_job_complete comes after it
            level = logging.DEBUG if self.request.retries else logging.INFO  # one line in the job log, not one a look
            waits = "job %s: the finalizer waits for a batch still running in a live process: %s"
            log.log(level, waits, job_id, start.wait)
            raise self.retry(countdown=finalizer_wait_seconds(), max_retries=None)
        if not start.run:
            log.info("job %s: another finalizer runs it, or ran it; this one is dropped", job_id)
            return
        kept_through_failover(f"job {job_id}'s finalizer claim")  # lost, another finalizer could run
        # An on_job_complete longer than BATCHERY_LOST_SECONDS must not be taken for a lost one,
        # and finalized again beside itself: its heartbeat renews the claim the watchdog checks.
        beat = partial(_still_finalizing, spec, token)
        with heartbeat(beat, settings.lost_seconds / 4, f"finalizer-{job_id}"):
            _finalize(spec, api)


def kept_through_failover(what: str) -> None:
    """Wait for a replica to hold the writes made so far (a Sentinel-backed store only). A failure
    to confirm it is logged, not raised: the write is on the master, and is lost only if the
    master dies now."""
    try:
        replicated(services().redis)
    except redis.RedisError as err:
        log.warning("%s: not confirmed on a replica (%s): a failover now could lose it", what, err)


def finalizer_wait_seconds() -> float:
    """How long a finalizer waiting for a live process's batch waits before it looks again: well
    within BATCHERY_LOST_SECONDS (each look renews its claim), and at most 5 s."""
    return max(0.2, min(5.0, settings.lost_seconds / 4))


def _still_finalizing(spec: dict, token: str) -> bool:
    """Take, or keep, the right to finalize the job; a finalizer silent for BATCHERY_LOST_SECONDS
    (its worker died) loses it to the next finalizer message."""
    at = now()
    return services().store.finalizing(spec, token, at - settings.lost_seconds, at)


def _finalize(spec: dict, api: dict) -> None:
    job_id = spec["job_id"]
    store = services().store
    state = store.state(job_id, spec["api_name"], now())
    if state is None or status.is_final(state["status"]):
        return
    final = status.COMPLETED_WITH_FAILURES if state["failed_batches"] else status.SUCCEEDED
    message = ""
    if state["oom_batches"]:
        final, message = status.WORKER_OOM, oom_message(state["oom_batch"], state["oom_batches"])
    error = ""
    try:
        predictor_class = load_class(api, _predictors.deployed, _projects).cls
        if callable(getattr(predictor_class, "on_job_complete", None)):
            log.info("running on_job_complete")
            # the job as it is about to end, for an on_job_complete(self, job) (built only for one)
            job = partial(completed_job, state, final, message, RetryStore(store.redis), now())
            _predictors.get(spec, api, partial(job_spec_fields, spec)).on_job_complete(job)
    except PredictorError as err:
        log.error("job %s: %s", job_id, err, exc_info=err)
        error = str(err)
    except Exception as err:
        log.exception("job %s: on_job_complete raised", job_id)
        error = f"on_job_complete raised {type(err).__name__}: {err}"
    if error and status.strongest(final, status.WORKER_ERROR) == status.WORKER_ERROR:
        final, message = status.WORKER_ERROR, error
    elif error:  # the stronger status stays, and its message says what else went wrong
        message = f"{message}; {error}"
    flush_lines()  # on_job_complete's lines before the store's line saying how the job ended
    ended = store.end(spec, final, message, now())
    kept_through_failover(f"job {job_id}'s end")  # lost, the job would be finalized again
    _predictors.evict(job_id)
    if not ended:  # stopped or timed out while on_job_complete ran: that status stands
        state = store.state(job_id, spec["api_name"], now())
        final, message = (state["status"], state["message"]) if state else (final, message)
        message = f"{message}; on_job_complete had begun before it and ran to its end".lstrip("; ")
    # the process log's line; the job's own log got its line from the store, with the status
    log.info("job %s ended: %s%s", job_id, final, f" ({message})" if message else "", extra=NOT_IN_JOB_LOG)


def oom_message(batch_id: str, batches: int) -> str:
    """The status message of a job whose batches failed for good because their workers ran out of memory."""
    which = f"batch {batch_id}" if batches == 1 else f"batch {batch_id} and {batches - 1} other batches"
    return (
        f"{which} failed for good: the kernel killed the worker running it for memory (OOM); "
        "use a smaller batch_size, or give each worker more memory"
    )


@celery.task(name=ENQUEUE_JOB, bind=True, acks_late=True, reject_on_worker_lost=True)
def enqueue_job(self, job_id: str) -> None:
    """Stream a job's S3 input into its backlog; resumes where a dead enqueuer stopped."""
    token = f"{process_id()}:{uuid.uuid4().hex[:8]}"  # says who holds the lease
    found = services().store.spec_and_api(job_id)
    api_name = found[0]["api_name"] if found else ""
    with kept_invisible(self.request, settings.sqs_visibility_timeout), for_job(api_name, job_id):
        result = Enqueuer(services().store, services().dispatcher).run(job_id, token=token)
    if result == "busy":  # another enqueuer holds the lease: try again once it would have expired
        raise self.retry(countdown=settings.enqueue_lease_seconds / 2, max_retries=None)

"""Enqueuing an S3 input in the background: stream it into the job's backlog, resumably.

Runs as a Celery task on the workers (off the request). It holds a lease in Redis while it
works and saves its cursor with every chunk of batches, in the same Lua call, so an enqueuer
that dies is resumed from the last chunk by the next one, with no batch lost or repeated.
"""

from __future__ import annotations

import json
import logging
import time

from app.broker.dispatch import Dispatcher
from app.jobs.submission import follow
from app.model import status
from app.model.job import now
from app.model.wire import backlog_entry
from app.sources.batches import START, SourceError, source_batches
from app.sources.s3 import S3Error
from app.store.job_store import JobStore, Outcome
from app.store.joblog import flush_lines

log = logging.getLogger(__name__)

CHUNK = 1000  # batches per Redis call
# Attempts an enqueuer may fail with an error no rule foresaw (a bug, an input nothing checks for)
# before the job ends `status_unexpected_error`: the watchdog would otherwise start a new enqueuer
# after each, for ever, and the job would stay `status_enqueuing` with nothing said.
UNEXPECTED_FAILURES = 3
FLUSH_SECONDS = 0.5  # so that batches start running while a long input is still being read


class Enqueuer:
    """Moves a job's S3 input into its backlog."""

    def __init__(self, store: JobStore, dispatcher: Dispatcher):
        self.store = store
        self.dispatcher = dispatcher

    def run(self, job_id: str, token: str) -> str:
        """Enqueue (or resume enqueuing) a job: `done`, `busy` (another enqueuer is alive) or `gone`."""
        found = self.store.spec_and_api(job_id)
        source, cursor = self.store.enqueue_state(job_id)
        if found is None or source is None:
            return "gone"
        spec = found[0]
        state = self.store.state(job_id, spec["api_name"], now())
        if state is None or state["status"] != status.ENQUEUING:
            return "gone"
        if not self.store.take_lease(job_id, token):
            return "busy"
        if cursor:
            log.info("job %s: resuming enqueuing at batch %d", job_id, cursor["batch"])
        try:
            return self._stream(spec, source, cursor or START, token)
        except (SourceError, S3Error) as err:
            log.warning("job %s: enqueuing failed: %s", job_id, err)
            flush_lines()  # (in a worker, lines are written in the background) before the store's
            self.store.end(spec, status.ENQUEUE_FAILED, str(err), now())
            return "done"
        except Exception as err:  # noqa: BLE001 - counted, then raised again until the last attempt
            return self._unexpected(spec, err)

    def _unexpected(self, spec: dict, err: Exception) -> str:
        """Count an unforeseen failure; raise it again (to be retried) until the last attempt, which
        ends the job `status_unexpected_error` saying what failed."""
        job_id = spec["job_id"]
        failures = self.store.count_enqueue_failure(job_id)
        log.error("job %s: enqueuing failed (attempt %d of %d)", job_id, failures, UNEXPECTED_FAILURES, exc_info=err)
        if failures < UNEXPECTED_FAILURES:
            raise err
        flush_lines()
        message = f"enqueuing failed {failures} times: {type(err).__name__}: {err}"
        self.store.end(spec, status.UNEXPECTED_ERROR, message, now())
        return "done"

    def _stream(self, spec: dict, source: dict, cursor: dict, token: str) -> str:
        chunk: list[str] = []
        flushed = time.monotonic()
        started = cursor["batch"] > 0
        after = cursor
        for body, after in source_batches(source, cursor):
            chunk.append(backlog_entry(after["batch"] - 1, body))
            due = time.monotonic() - flushed >= FLUSH_SECONDS or (not started and len(chunk) >= spec["workers"])
            if len(chunk) >= CHUNK or due:
                if not self._flush(spec, chunk, after, token):
                    return "gone"
                chunk, flushed, started = [], time.monotonic(), True
        if chunk and not self._flush(spec, chunk, after, token):
            return "gone"
        no_items = "the input holds no items: the selected files are empty, or hold only blank lines"
        outcome = self.store.enqueued(spec, now(), token, no_items)
        follow(self.dispatcher, self.store, spec, outcome)
        log.info("job %s: enqueued %d items in %d batches", spec["job_id"], after["item"], after["batch"])
        return "done"

    def _flush(self, spec: dict, chunk: list[str], cursor: dict, token: str) -> bool:
        appended = self.store.append(spec, chunk, now(), cursor=json.dumps(cursor), token=token)
        follow(self.dispatcher, self.store, spec, Outcome(released=appended.released))
        return appended.accepted

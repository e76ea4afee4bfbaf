"""Submitting a job: validate, slice into batches, store, release the first window."""

from __future__ import annotations

import json
import logging
import math

from app import status
from app.batching import item_batches
from app.dispatch import Dispatcher
from app.errors import BrokerUnavailable, InvalidRequest
from app.job import build_spec, now
from app.registry import Registry
from app.schemas import load_submission
from app.store import JobStore, Outcome

log = logging.getLogger(__name__)


def decode_body(raw: bytes) -> object:
    """The request body as JSON; raises InvalidRequest for an empty or malformed body."""
    if not raw.strip():
        raise InvalidRequest("the request body is empty: send the job as a JSON object")
    try:
        return json.loads(raw, parse_constant=_no_constants, parse_float=_finite_float)
    except RecursionError:
        raise InvalidRequest("the request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidRequest(f"the request body is not valid JSON: {err}") from None


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    # 1e400 would become inf, which json then writes back as the non-JSON `Infinity`.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text} is out of range")
    return value


class Submitter:
    """Turns a submission into a stored job whose first batches are on the broker."""

    def __init__(self, registry: Registry, store: JobStore, dispatcher: Dispatcher, queue_url: str):
        self.registry = registry
        self.store = store
        self.dispatcher = dispatcher
        self.queue_url = queue_url

    def submit(self, api_name: str, raw: bytes, dry_run: bool = False) -> dict | str:
        """Create a job (or, for a dry run, only validate: returns the text answer).

        Raises ApiNotFound, InvalidRequest, BrokerUnavailable.
        """
        api = self.registry.get(api_name)
        submission = load_submission(decode_body(raw))
        if "item_list" not in submission:
            raise InvalidRequest(
                "file_path_lister and delimited_files (S3 inputs) are not supported yet: use item_list"
            )
        entries = item_batches(submission["item_list"]["items"], submission["item_list"]["batch_size"])
        if dry_run:
            return "validations passed\n"
        spec = build_spec(api, submission, self.queue_url, now())
        self.store.create(spec, api, now())
        try:
            self._enqueue(spec, entries)
        except Exception as err:  # the broker refused: say so on the job, and to the client
            log.exception("job %s: enqueuing failed", spec["job_id"])
            self.store.end(spec, status.ENQUEUE_FAILED, f"could not publish batches to the broker: {err}", now())
            raise BrokerUnavailable(f"job {spec['job_id']} could not be enqueued: {err}") from None
        log.info("job %s: %d items in %d batches", spec["job_id"], len(submission["item_list"]["items"]), len(entries))
        return spec

    def _enqueue(self, spec: dict, entries: list[str]) -> None:
        self.dispatcher.publish_batches(spec["job_id"], self.store.append(spec, entries, now()))
        follow(self.dispatcher, spec["job_id"], self.store.enqueued(spec, now()))


def follow(dispatcher: Dispatcher, job_id: str, outcome: Outcome) -> None:
    """Do what a store call asked: publish released batches, then the finalizer if it was claimed."""
    dispatcher.publish_batches(job_id, outcome.released)
    if outcome.finalize:
        dispatcher.publish_finalizer(job_id)

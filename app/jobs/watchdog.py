"""A periodic sweep so that no job hangs, whatever single process dies.

It runs in the API processes (a daemon thread each; a Redis lock lets one sweep at a time):
- an S3 job whose enqueuer vanished (its worker was killed outright, so its message waits for
  the broker's visibility timeout; or the API died before publishing it) gets a new enqueuer,
  which resumes from the saved cursor;
- an item_list job still enqueuing long after its request ended (the API process died in the
  request) runs if all its batches were stored, else ends `status_enqueue_failed`, saying so;
- a job's batches released more than `BATCHERY_UNPUBLISHED_SECONDS` ago whose releasing process
  never said it published their messages (it died in between), or never delivered though the
  fleet has since begun messages released `BATCHERY_LOST_SECONDS` after them (the broker lost
  them; or nothing on the queue began for that long), are published again, each with a new
  generation so that only the newest message runs;
- a job's batch running in a pool process that died with its whole worker, or alone after its
  task ended (its liveness keys, renewed by its worker's main process, expired after
  `BATCHERY_LOST_SECONDS`: workers/liveness.py) is published again the same way, and the process no
  longer counts as running: no one else would requeue it before the broker's visibility timeout
  (an hour on the Redis broker). A live process is never taken for dead, however slow;
- a job whose batches have all ended and whose finalizer was claimed that long ago (the same two
  rules; a running finalizer renews its claim) but that is still in progress (the finalizer's
  message was lost, or its worker) gets its finalizer published again (`on_job_complete` runs
  once while its worker lives; at-least-once if that worker dies, one status counts);
- reading each job's state also times out the jobs past their deadline;
- the APIs this process deployed at start are deployed again if Redis no longer has them (it lost
  its data): every request would otherwise be a 404 until the process restarted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import cast

import redis

from app.broker.config import public_queue_url
from app.jobs.services import Services
from app.jobs.submission import ITEMS_STORED, follow
from app.model import status
from app.model.job import now, queue_of
from app.store import keys, owners
from app.store.job_store import Outcome
from app.store.registry import Deployment

log = logging.getLogger(__name__)


class Watchdog:
    """Finds jobs whose enqueuer, batch messages or finalizer were lost, and gets them going again."""

    def __init__(self, services: Services, deployed: Sequence[Deployment] = ()):
        self.services = services
        # what this process deployed at start (BATCHERY_APIS): deployed again if Redis loses it, or
        # every request would be a 404 "not deployed" until the process restarts, /healthz green
        self.deployed = list(deployed)
        # Jobs on another queue belong to another fleet sharing this Redis: what this process
        # publishes goes to its own queue, where that fleet's workers would never see it.
        self.queue_url = public_queue_url(services.settings)
        # a job enqueuing this long with no live enqueuer has lost it (the enqueuer's lease)
        self.stale_seconds = services.settings.enqueue_lease_seconds
        self._stopped = threading.Event()

    def sweep(self, at: float) -> list[str]:
        """One pass over this fleet's jobs in progress; returns the ids of the jobs it acted on."""
        self.services.registry.restore_missing(self.deployed)
        states = self._jobs_in_progress(at)
        lost_before = self._lost_before(states, at)
        dead = self._dead_processes(states)
        return [state["spec"]["job_id"] for state in states if self._check_one(state, at, lost_before, dead)]

    def _check_one(self, state: dict, at: float, lost_before: float, dead: set[str]) -> bool:
        """`_check` one job; a job it fails on is logged and left to the next sweep, so that one
        job (say, a batch the broker refuses) does not stop the sweep for all the others."""
        try:
            return self._check(state, at, lost_before, dead)
        except redis.RedisError:
            raise  # the job store is down: the whole sweep is (sweep_in_turn says so in one line)
        except Exception:
            log.exception("watchdog: job %s could not be checked; the other jobs were", state["spec"]["job_id"])
            return False

    def _jobs_in_progress(self, at: float) -> list[dict]:
        """The states of the jobs in progress on this fleet's queue (reading them also times out
        the jobs past their deadline)."""
        client = self.services.redis
        names = [
            (job_id.decode(), api_name)
            for api_name in self.services.registry.names()
            for job_id in cast(list[bytes], client.zrange(keys.api_active(api_name), 0, -1))
        ]
        states = self.services.store.states(names, at)
        return [
            state
            for state in states
            if state and state["status"] in status.IN_PROGRESS and queue_of(state["spec"]) == self.queue_url
        ]

    def _lost_before(self, states: list[dict], at: float) -> float:
        """Messages released before this and never delivered were lost.

        A message waits in the queue behind the fleet's work, for as long as that takes: its age
        alone does not tell it from a lost one (taking waiting ones for lost republished them, and
        again, for as long as the fleet was saturated). The queue is first in, first out, so one
        released LOST seconds before a message that was already delivered is lost. If nothing on
        the queue was delivered for LOST seconds (an idle fleet, or every message lost), a message
        that old is.
        """
        lost = self.services.settings.lost_seconds
        last_delivery = max((state["last_delivery"] for state in states), default=0.0)
        if last_delivery < at - lost:
            return at - lost
        return min(at, max(state["delivered_release"] for state in states)) - lost

    def _dead_processes(self, states: list[dict]) -> set[str]:
        """The processes named in the jobs' `procs` that their worker no longer says are alive:
        neither their liveness key nor their worker's list of live children names them, both
        renewed by the worker's main process (workers/liveness.py). They died in the middle of a
        batch, alone or with their whole worker; a slow one (a predictor holding the GIL) is not
        dead, and neither is one whose key alone Redis lost."""
        return owners.dead(self.services.redis, sorted({name for state in states for name in state["procs"]}))

    def _check(self, state: dict, at: float, lost_before: float, dead: set[str]) -> bool:
        spec = state["spec"]
        acted = self._revive(spec, [name for name in state["procs"] if name in dead], at)
        acted = self._recover_lost_messages(spec, at, lost_before) or acted
        if state["status"] != status.ENQUEUING or at - state["created"] < self.stale_seconds:
            return acted
        store, job_id = self.services.store, spec["job_id"]
        source, cursor = store.enqueue_state(job_id)
        if source is None:
            return self._finish_item_list(spec, cursor, at)
        if store.lease_held(job_id):
            return acted
        log.warning("job %s: no live enqueuer; publishing a new one", job_id)
        self.services.dispatcher.publish_enqueuer(job_id)
        return True

    def _finish_item_list(self, spec: dict, cursor: dict | None, at: float) -> bool:
        """An item_list job whose API process died mid-request: running, if all its batches were
        stored; else `status_enqueue_failed`, saying so (its client got no job id either way)."""
        store = self.services.store
        if cursor != ITEMS_STORED:
            message = "enqueuing stopped: the API process storing the job's batches died; submit the job again"
            return store.end(spec, status.ENQUEUE_FAILED, message, at)
        log.warning("job %s: its API process died after storing every batch; the job runs", spec["job_id"])
        follow(self.services.dispatcher, store, spec, store.enqueued(spec, at))
        return True

    def _revive(self, spec: dict, dead: list[str], at: float) -> bool:
        """Publish again the batches that were running in processes that died (no one else will
        before the broker's visibility timeout)."""
        store, job_id = self.services.store, spec["job_id"]
        again = [found for name in dead for found in store.revive(spec, name, at)]
        if again:
            log.warning(
                "job %s: %d batches were running in worker processes that died; publishing them again",
                job_id,
                len(again),
            )
            self._publish_again(spec, again)
        return bool(dead)

    def _publish_again(self, spec: dict, found: list[tuple[int, str]]) -> None:
        """Publish the `(generation, entry)` batches the store gave back, and say they were."""
        self.services.dispatcher.republish_batches(spec["job_id"], found)
        self.services.store.published(spec, [entry for _, entry in found])

    def _recover_lost_messages(self, spec: dict, at: float, lost_before: float) -> bool:
        store, dispatcher, job_id = self.services.store, self.services.dispatcher, spec["job_id"]
        # A message its publisher never said it published was lost with that process much sooner.
        unpublished_before = at - self.services.settings.unpublished_seconds
        lost = store.republish(spec, lost_before, unpublished_before, at)
        if lost:
            log.warning("job %s: %d batches released but never delivered; publishing them again", job_id, len(lost))
            self._publish_again(spec, lost)
        # a finalizer's message waits in the same queue; a running one renews its claim (heartbeat)
        if store.reclaim_finalizer(spec, lost_before, unpublished_before, at):
            log.warning("job %s: its finalizer did not end the job; publishing it again", job_id)
            follow(dispatcher, store, spec, Outcome(finalize=True))
            return True
        return bool(lost)

    def start(self, every: float) -> threading.Thread:
        """Sweep every `every` seconds in a daemon thread, one process of the fleet at a time."""
        thread = threading.Thread(target=self._loop, args=(every,), name="batchery-watchdog", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """End the sweeping thread after its current sweep."""
        self._stopped.set()

    def _loop(self, every: float) -> None:
        while not self._stopped.wait(every):
            self.sweep_in_turn(every)

    def sweep_in_turn(self, every: float) -> bool:
        """Sweep unless another process of this fleet swept in the last `every` seconds; whether
        this one did. Never raises: a failed sweep is logged, and the next one tries again."""
        # The turn is the fleet's, not the Redis's: fleets on other queues mind only their own
        # jobs, and one of them taking every turn would leave this fleet's jobs to no one.
        turn = keys.watchdog_lock(self.queue_url)
        try:
            if self.services.redis.set(turn, "1", nx=True, px=int(every * 900)):
                self.sweep(now())
                return True
        except redis.RedisError as err:
            # One line, not a traceback every few seconds for as long as Redis is down.
            log.warning("watchdog sweep skipped: the job store does not answer (%s)", err)
        except Exception:
            log.exception("watchdog sweep failed")
        return False

"""A periodic sweep so that no job hangs, whatever single process dies.

It runs in the API processes (a daemon thread each; a Redis lock per queue lets one process sweep
each queue at a time: its own BATCHERY_QUEUE's, and the dedicated pools' queues no fleet calls its own):
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
  its data): every request would otherwise be a 404 until the process restarted;
- ended jobs whose retention passed leave the listings, and code no one runs any more is removed
  (app/jobs/retention.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import cast

import redis

from app.broker.config import public_queue_url
from app.jobs import retention
from app.jobs.services import Services
from app.jobs.submission import ITEMS_STORED, follow
from app.model import status
from app.model.job import now, queue_of
from app.model.queues import job_queue
from app.store import keys, owners
from app.store.job_store import Outcome
from app.store.pools import Pools
from app.store.registry import Deployment

log = logging.getLogger(__name__)


class Watchdog:
    """Finds jobs whose enqueuer, batch messages or finalizer were lost, and gets them going again."""

    def __init__(self, services: Services, deployed: Sequence[Deployment] = ()):
        self.services = services
        # what this process deployed at start (BATCHERY_APIS): deployed again if Redis loses it, or
        # every request would be a 404 "not deployed" until the process restarts, /healthz green
        self.deployed = list(deployed)
        # Every job in progress on this broker is swept, on its own queue (each queue its own turn);
        # a job on another broker belongs to another fleet sharing this Redis, which minds it.
        self.queue_url = public_queue_url(services.settings)
        self.default_queue = services.settings.queue
        # a job enqueuing this long with no live enqueuer has lost it (the enqueuer's lease)
        self.stale_seconds = services.settings.enqueue_lease_seconds
        self._stopped = threading.Event()

    def sweep(self, at: float) -> list[str]:
        """One pass over the jobs in progress on every queue of this broker; returns the ids of the
        jobs it acted on."""
        return self._sweep(self._jobs_in_progress(at), at)

    def _sweep(self, states: list[dict], at: float) -> list[str]:
        self.services.registry.restore_missing(self.deployed)
        dead = self._dead_processes(states)
        acted = []
        for queue_states in self._by_queue(states).values():
            # each queue is first in, first out on its own: what it delivered says nothing of another's
            lost_before = self._lost_before(queue_states, at)
            acted += [s["spec"]["job_id"] for s in queue_states if self._check_one(s, at, lost_before, dead)]
        retention.sweep(self.services, at)  # the ended jobs that expired since (app/jobs/retention.py)
        return acted

    def _by_queue(self, states: list[dict]) -> dict[str, list[dict]]:
        """The states by the queue their job runs on."""
        by_queue: dict[str, list[dict]] = {}
        for state in states:
            by_queue.setdefault(job_queue(state["spec"], self.default_queue), []).append(state)
        return by_queue

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
        """The states of the jobs in progress on this broker's queues (reading them also times out
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
            if state and state["status"] in status.IN_PROGRESS and self._on_this_broker(state["spec"])
        ]

    def _on_this_broker(self, spec: dict) -> bool:
        """Whether a job's queue is on this process's broker: what it publishes reaches the job's pool."""
        return queue_of(spec) == public_queue_url(self.services.settings, job_queue(spec, self.default_queue))

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
        self.services.dispatcher.publish_enqueuer(job_id, queue=spec.get("queue", ""))
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
        self.services.dispatcher.republish_batches(spec["job_id"], found, queue=spec.get("queue", ""))
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

    def _homeless_queues(self, every: float) -> list[str]:
        """Say this process's fleet sweeps its own queue (BATCHERY_QUEUE); the other queues known
        on this broker that no fleet calls its own (dedicated pools' queues): any process sweeps
        those, in turn. A queue another fleet calls its own is left to that fleet's turns."""
        client = self.services.redis
        client.set(self._home_key(self.default_queue), "1", px=int(every * 3000))
        others = [queue for queue in Pools(client).known_queues() if queue != self.default_queue]
        pipe = client.pipeline(transaction=False)
        for queue in others:
            pipe.exists(self._home_key(queue))
        return [queue for queue, homed in zip(others, pipe.execute(), strict=True) if not homed]

    def _home_key(self, queue: str) -> str:
        return keys.watchdog_home(public_queue_url(self.services.settings, queue))

    def _take_turn(self, queue: str, every: float) -> bool:
        """Take the turn to sweep `queue` for the next `every` seconds, unless another process has it."""
        turn = keys.watchdog_lock(public_queue_url(self.services.settings, queue))
        return bool(self.services.redis.set(turn, "1", nx=True, px=int(every * 900)))

    def _loop(self, every: float) -> None:
        while not self._stopped.wait(every):
            self.sweep_in_turn(every)

    def sweep_in_turn(self, every: float) -> set[str]:
        """Sweep each queue (this process's own, and every known one that no fleet calls its own)
        that no other process swept in the last `every` seconds; the queues this one swept (empty:
        none). Never raises: a failed sweep is logged, and the next one tries again."""
        # The turn is each queue's, not the Redis's: a process taking one queue's turn leaves the
        # others to whichever process takes theirs, and no queue's jobs wait on another's sweep.
        try:
            queues = [self.default_queue, *self._homeless_queues(every)]
            taken = {queue for queue in queues if self._take_turn(queue, every)}
            if taken:
                at = now()
                states = self._jobs_in_progress(at)
                self._sweep([s for s in states if job_queue(s["spec"], self.default_queue) in taken], at)
            return taken
        except redis.RedisError as err:
            # One line, not a traceback every few seconds for as long as Redis is down.
            log.warning("watchdog sweep skipped: the job store does not answer (%s)", err)
        except Exception:
            log.exception("watchdog sweep failed")
        return set()

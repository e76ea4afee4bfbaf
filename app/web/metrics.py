"""Prometheus metrics, read from the job store at scrape time.

Nothing is counted in process memory: every API and worker process writes its counts to Redis
(the job hash, the per-API status counts), so any API process answers `/metrics` with the
fleet's totals, however many gunicorn and Celery processes there are.

Labels are `api` and `job_id` (not `job`: Prometheus gives every scraped series its own `job`
label and would rename ours to `exported_job`), and `queue`: the queue a job's batches run on (its
API's dedicated pool, or the default queue). Per queue, `batchery_queue_demand` says how many
worker processes its jobs want now and `batchery_queue_processes` how many serve it: what an
autoscaler follows (README, "The demand metric").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from app.broker.queue import BrokerQueue
from app.config import Settings
from app.model import job, status
from app.model.queues import CONTROL_SUFFIX, job_queue
from app.store import keys
from app.store.job_store import JobStore
from app.store.pools import Pools

log = logging.getLogger(__name__)

# Each scrape reads at most this many in-progress jobs per API, plus its `recent_jobs` latest.
MAX_ACTIVE_JOBS = 200
JOB = ["api", "job_id"]
WORKER_STATES = ("initializing", "running", "pending", "stalled")


class JobStoreCollector(Collector):
    """Batchery's metrics, read from Redis in a few pipelined round trips per scrape."""

    def __init__(self, store: JobStore, settings: Settings, queue: BrokerQueue):
        self.store = store
        self.settings = settings
        self.queue = queue

    def describe(self) -> list[Metric]:
        return []  # registering must not read Redis

    def collect(self) -> Iterator[Metric]:
        # the job store's client does not decode responses: its members are bytes
        members = cast("set[bytes]", self.store.redis.smembers(keys.apis()))
        api_names = sorted(name.decode() for name in members)
        # the jobs' states first: reading one past its timeout ends it, and the counts then say so
        demand: dict[str, int] = {}
        per_job = list(self._per_job(api_names, demand))
        yield self._jobs_per_status(api_names)
        yield from per_job
        known = Pools(self.store.redis).known_queues()
        queues = sorted({self.settings.queue, *known, *demand} - {q for q in known if q.endswith(CONTROL_SUFFIX)})
        yield from self._queues(queues, demand)
        depth = self._broker_depth([*queues, *(q + CONTROL_SUFFIX for q in queues if q + CONTROL_SUFFIX in known)])
        if depth is not None:
            yield depth

    def _jobs_per_status(self, api_names: list[str]) -> Metric:
        gauge = GaugeMetricFamily("batchery_jobs", "Jobs per API and status, now.", labels=["api", "status"])
        for api_name, counts in self.store.status_counts(api_names).items():
            for code, count in sorted(counts.items()):
                gauge.add_metric([api_name, code], count)
        return gauge

    def _queues(self, queues: list[str], demand: dict[str, int]) -> Iterator[Metric]:
        """Per queue of batches: the batches that want a worker process now, and the processes serving it."""
        wanted = GaugeMetricFamily(
            "batchery_queue_demand",
            "Batches that want a worker process now: for each job in progress on the queue, min(workers, its "
            "batches not yet ended), at least 1 while it enqueues or waits for its finalizer. Scale on this, "
            "not on the broker queue's length (it holds only each job's released window).",
            labels=["queue"],
        )
        serving = GaugeMetricFamily(
            "batchery_queue_processes", "Pool processes of live workers serving the queue's batches.", labels=["queue"]
        )
        for queue, processes in Pools(self.store.redis).processes(queues).items():
            wanted.add_metric([queue], demand.get(queue, 0))
            serving.add_metric([queue], processes)
        yield from (wanted, serving)

    def _per_job(self, api_names: list[str], demand: dict[str, int]) -> Iterator[Metric]:
        succeeded = CounterMetricFamily("batchery_batches_succeeded", "Batches that succeeded.", labels=JOB)
        attempts = CounterMetricFamily(
            "batchery_batch_failed_attempts", "Failed attempts (a batch failing 3 times counts 3).", labels=JOB
        )
        failed = CounterMetricFamily(
            "batchery_batches_failed", "Batches that failed for good (dead-lettered, or not retried).", labels=JOB
        )
        seconds = SummaryMetricFamily(
            "batchery_batch_seconds", "Time in predict of successful attempts (sum) and their count.", labels=JOB
        )
        in_queue = GaugeMetricFamily(
            "batchery_batches_in_queue", "Batches not yet finished (0 once the job ended).", labels=JOB
        )
        total = GaugeMetricFamily("batchery_batches", "Batches of the job enqueued so far.", labels=JOB)
        workers = GaugeMetricFamily(
            "batchery_workers",
            "A job in progress: processes initializing or running its batches; pending: batches in flight no "
            "process has picked up yet; stalled: pending for BATCHERY_STALLED_SECONDS.",
            labels=[*JOB, "queue", "state"],
        )
        listed = self.store.job_ids_by_api(api_names, self.settings.recent_jobs, MAX_ACTIVE_JOBS)
        pairs = [(job_id, api_name) for api_name, ids in listed.items() for job_id in ids]
        for (job_id, api_name), state in zip(pairs, self.store.states(pairs, job.now()), strict=True):
            if state is None:
                continue
            labels = [api_name, job_id]
            succeeded.add_metric(labels, state["succeeded"])
            attempts.add_metric(labels, state["failed"])
            failed.add_metric(labels, state["failed_batches"])
            seconds.add_metric(labels, count_value=state["succeeded"], sum_value=state["time_sum"])
            in_queue.add_metric(labels, job.batches_in_queue(state))
            total.add_metric(labels, state["total"])
            if not status.is_final(state["status"]):
                queue = job_queue(state["spec"], self.settings.queue)
                for name in WORKER_STATES:
                    workers.add_metric([*labels, queue, name], state["worker_counts"][name])
                demand[queue] = demand.get(queue, 0) + job_demand(state)
        yield from (succeeded, attempts, failed, seconds, in_queue, total, workers)

    def _broker_depth(self, queues: list[str]) -> Metric | None:
        """Messages waiting in each of `queues` on the broker; None if the broker does not answer."""
        gauge = GaugeMetricFamily(
            "batchery_broker_queue_depth", "Messages waiting in the broker queue.", labels=["queue"]
        )
        try:
            for queue in queues:
                gauge.add_metric([self.queue.name_of(queue)], self.queue.depth(queue))
        except Exception as err:  # noqa: BLE001 - the job metrics are still worth serving
            log.warning("cannot read the broker queue's depth: %s", type(err).__name__)
            return None
        return gauge


def job_demand(state: dict) -> int:
    """The worker processes a job in progress wants now: min(workers, its batches not yet ended);
    at least 1 while it enqueues or waits for its finalizer (control work runs on the pool's
    workers too); 0 while paused."""
    if state["status"] not in (status.ENQUEUING, status.RUNNING):
        return 0
    return max(1, min(state["workers"], job.batches_in_queue(state)))


def registry_for(store: JobStore, settings: Settings, queue: BrokerQueue) -> CollectorRegistry:
    """A registry holding only Batchery's collector (no process metrics: they are per process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobStoreCollector(store, settings, queue))
    return registry

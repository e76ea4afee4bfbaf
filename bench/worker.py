"""The Celery app the bench's workers run: Batchery's own (`workers`), plus the baselines' tasks.

`celery -A bench.worker worker` serves Batchery's batches and the plain-Celery baselines from the
same processes, with the same settings (app/broker/config.py: JSON, late acks, prefetch 1, task events).
"""

from __future__ import annotations

import os
import time

import redis

from app.store.connection import store_client
from workers.celery_app import celery, settings
from workers.tasks import enqueue_job, finalize_job, run_batch  # noqa: F401 - registers Batchery's tasks

if os.environ.get("BENCH_TIMELINE_DIR"):  # bench/load.py --timeline: when each task was received and ran
    from bench import timeline

    timeline.install(os.environ["BENCH_TIMELINE_DIR"])

_redis: redis.Redis | None = None


def _client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = store_client(settings.redis_url, settings)
    return _redis


@celery.task(name="bench.noop", ignore_result=False)
def noop(*args: object) -> None:
    """A chord header task: does nothing, its (None) result is stored, as a chord needs."""


@celery.task(name="bench.noop_ignored", ignore_result=True)
def noop_ignored(*args: object) -> None:
    """The raw ceiling's task: does nothing, stores nothing."""


@celery.task(name="bench.chord_done", ignore_result=True)
def chord_done(results: list, tag: str) -> None:
    """A chord body: records when it ran and how many header results it received."""
    _client().hset(f"bench:chord:{tag}", mapping={"time": repr(time.time()), "results": len(results)})


@celery.task(name="bench.sleep", ignore_result=True)
def sleep(tag: str, batch_id: str, seconds: float) -> None:
    """The stop baseline's task: sleeps like a 1 s batch, recording its start and end times."""
    _client().rpush(f"bench:starts:{tag}", f"{batch_id} {time.time()!r}")
    time.sleep(seconds)
    _client().rpush(f"bench:ends:{tag}", f"{batch_id} {time.time()!r}")

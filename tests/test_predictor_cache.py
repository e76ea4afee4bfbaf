"""The predictor cache's policy (issue 22.4): a worker process keeps up to BATCHERY_PREDICTOR_CACHE
predictors (default 16), and, while its RSS is over BATCHERY_PREDICTOR_MEMORY_BYTES after it made
one, only that newest one. Unit tests of the policy, then real workers on a queue of their own."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import Counter

import pytest

from app import create_app
from app.config import Settings
from app.model import status
from app.store.joblog import attach_job_log
from tests.conftest import Jobs
from tests.services import Worker
from tests.test_pools import write_apis
from workers.runtime import PredictorCache, process_rss

PREDICTOR = """
class PythonPredictor:
    def __init__(self, config, job_spec):
        self.job_id = job_spec["job_id"]

    def predict(self, payload):
        return payload
"""


@pytest.fixture
def api(tmp_path) -> dict:
    """An API (as a worker reads it) whose predictor does nothing, read from its folder."""
    (tmp_path / "predictor.py").write_text(PREDICTOR)
    return {"api_id": uuid.uuid4().hex, "predictor_file": str(tmp_path / "predictor.py"), "project_dir": str(tmp_path)}


def spec(job_id: str) -> dict:
    return {"job_id": job_id, "config": {}}


class FakeRss:
    """A process's RSS as a test sets it; counts its reads."""

    def __init__(self, value: int = 0):
        self.value, self.reads = value, 0

    def __call__(self) -> int:
        self.reads += 1
        return self.value


# --- the policy --------------------------------------------------------------------------------


def test_the_defaults_keep_16_predictors_within_2_gib_and_both_are_settings():
    assert Settings().predictor_cache == 16
    assert Settings().predictor_memory_bytes == 2 << 30
    env = {"BATCHERY_PREDICTOR_CACHE": "3", "BATCHERY_PREDICTOR_MEMORY_BYTES": "0"}
    assert (Settings.from_env(env).predictor_cache, Settings.from_env(env).predictor_memory_bytes) == (3, 0)
    with pytest.raises(ValueError, match="BATCHERY_PREDICTOR_CACHE must be 1 or more"):
        Settings.from_env({"BATCHERY_PREDICTOR_CACHE": "0"})


def test_under_the_memory_budget_the_count_bounds_the_cache_least_recently_used_first(api):
    rss = FakeRss(100 << 20)
    cache = PredictorCache(3, memory_bytes=1 << 30, rss=rss)
    first = cache.get(spec("a"), api)
    for job_id in ("b", "c"):
        cache.get(spec(job_id), api)
    assert cache.get(spec("a"), api) is first  # a hit: not made again, and now the most recently used
    cache.get(spec("d"), api)
    assert cache.kept() == ["c", "a", "d"]  # b, the least recently used, went
    assert rss.reads == 3  # once per predictor made beside another (never on a hit)


def test_over_the_memory_budget_only_the_newest_predictor_is_kept(api):
    rss = FakeRss(100 << 20)
    cache = PredictorCache(16, memory_bytes=1 << 30, rss=rss)
    for job_id in ("a", "b", "c"):
        cache.get(spec(job_id), api)
    rss.value = 3 << 30  # the next model is big: the process is over its budget once it is loaded
    cache.get(spec("big"), api)
    assert cache.kept() == ["big"]
    newest = cache.get(spec("big-2"), api)  # a second big one replaces the first
    assert cache.kept() == ["big-2"] and cache.get(spec("big-2"), api) is newest


def test_the_budget_drops_the_least_recently_used_only_until_the_process_is_under_it(api):
    rss = FakeRss(100 << 20)
    cache = PredictorCache(16, memory_bytes=1 << 30, rss=rss)
    for job_id in ("a", "b", "c"):
        cache.get(spec(job_id), api)
    cache.get(spec("a"), api)  # used again: b is now the least recently used

    class Shrinking(FakeRss):
        def __call__(self) -> int:  # over the budget until one predictor has been dropped
            self.reads += 1
            return (2 << 30) if self.reads == 1 else (500 << 20)

    cache.rss = Shrinking()
    cache.get(spec("d"), api)
    assert cache.kept() == ["c", "a", "d"]


def test_no_budget_reads_no_rss(api):
    rss = FakeRss(64 << 30)
    cache = PredictorCache(2, memory_bytes=0, rss=rss)
    for job_id in ("a", "b"):
        cache.get(spec(job_id), api)
    assert cache.kept() == ["a", "b"] and rss.reads == 0


def test_the_process_rss_is_read_and_follows_memory_in_use():
    before = process_rss()
    held = bytearray(64 << 20)
    for offset in range(0, len(held), 4096):  # touched: untouched pages take no memory
        held[offset] = 1
    assert before > 0 and process_rss() - before >= 48 << 20


# --- real workers ------------------------------------------------------------------------------


class Pool:
    """An API on a queue of its own, and the app that submits its jobs."""

    def __init__(self, settings, tmp_path, redis_url: str):
        self.tag = uuid.uuid4().hex[:8]
        self.queue, self.api = f"cache-{self.tag}", f"probe-{self.tag}"
        apis_file = write_apis(tmp_path / "apis", [{"name": self.api, "queue": self.queue}])
        self.settings = dataclasses.replace(settings, apis_file=apis_file)
        self.app = create_app({"SETTINGS": self.settings})
        self.jobs = Jobs(self.app.test_client())
        self.redis_url = redis_url

    def worker(self, worker_env, logdir, **env: str) -> Worker:
        """A worker of two pool processes (the Procfile's default) serving this queue only."""
        env = {**worker_env, "BATCHERY_QUEUES": self.queue, **env}
        return Worker(env, logdir, f"cache-{self.tag}-{uuid.uuid4().hex[:4]}", concurrency=2)

    def run(self, jobs: int, batches: int, **config) -> list[str]:
        """Submit `jobs` jobs at once, each of `batches` one-item batches on one worker (so the
        queue holds the jobs' batches in turn), with `config`; wait until they all succeed; their ids."""
        config = {"redis_url": self.redis_url, "tag": self.tag, "count_alive": True, "sleep": 0.02, **config}
        body = {"workers": 1, "config": config, "item_list": {"items": list(range(batches)), "batch_size": 1}}
        job_ids = [self.jobs.submit(self.api, body)["job_id"] for _ in range(jobs)]
        for job_id in job_ids:
            ended = self.jobs.wait_final(self.api, job_id, timeout=180)
            assert ended["status"] == status.SUCCEEDED, ended
            assert ended["batch_metrics"]["succeeded"] == batches
        return job_ids

    def inits(self, r) -> list[dict]:
        """Each predictor made: its job, the process, the others that process held alive then."""
        return [json.loads(line) for line in r.lrange(f"probe:{self.tag}:inits", 0, -1)]


@pytest.fixture
def pool(settings, tmp_path, redis_server, flask_app):
    made = Pool(settings, tmp_path, redis_server.url)
    yield made
    made.app.extensions["batchery_watchdog"].stop()
    attach_job_log(flask_app.extensions["batchery"].job_log)  # the shared app's job log handler back


def test_ten_jobs_at_once_on_the_defaults_make_each_predictor_once_per_process(pool, worker_env, tmp_path, r):
    """The ordinary case: 10 jobs take turns on two processes; Batchery's old default of 2 made a
    predictor for nearly every batch."""
    worker = pool.worker(worker_env, tmp_path)
    try:
        job_ids = pool.run(jobs=10, batches=8)
    finally:
        worker.stop()
    inits = pool.inits(r)
    made = Counter((init["job"], init["pid"]) for init in inits)
    assert {job for job, _ in made} == set(job_ids)
    assert max(made.values()) == 1, made  # no process made a job's predictor twice
    assert len(inits) <= 2 * len(job_ids)


def test_over_its_memory_budget_a_process_keeps_only_the_predictor_it_runs(pool, worker_env, tmp_path, r):
    """A budget of 1 byte: every process is over it, so each keeps one predictor, and makes one
    again when the jobs take turns (what a model too big to keep twice costs)."""
    worker = pool.worker(worker_env, tmp_path, BATCHERY_PREDICTOR_MEMORY_BYTES="1")
    try:
        job_ids = pool.run(jobs=3, batches=8)
        log = worker.output()
    finally:
        worker.stop()
    inits = pool.inits(r)
    assert {init["job"] for init in inits} == set(job_ids)
    assert max(init["alive"] for init in inits) <= 1, inits  # the one it ran before, dropped once this one is made
    made = Counter((init["job"], init["pid"]) for init in inits)
    assert max(made.values()) > 1, made  # dropped while its job still ran, and made again
    assert "is over BATCHERY_PREDICTOR_MEMORY_BYTES" in log


def test_a_process_keeps_the_models_that_fit_in_its_memory_budget(pool, worker_env, tmp_path, r):
    """Predictors holding 100 MiB each, a budget of 300 MiB a process (a pool process starts at
    well under 100): a process keeps two of them at most, never the six jobs' it runs in turn."""
    worker = pool.worker(worker_env, tmp_path, BATCHERY_PREDICTOR_MEMORY_BYTES=str(300 << 20))
    try:
        pool.run(jobs=6, batches=6, hold_mib=100)
    finally:
        worker.stop()
    alive = [init["alive"] for init in pool.inits(r)]
    assert max(alive) <= 2, pool.inits(r)  # with no budget (the count allows 16), 5 here

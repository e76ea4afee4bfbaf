"""A bounded window: however large a job's `workers`, at most BATCHERY_MAX_IN_BROKER of its
messages wait in the broker, the job still runs to its end, and a stop leaves little to skip."""

from __future__ import annotations

import dataclasses
import time
import uuid

import pytest

from app import create_app
from app.model import status
from app.store.joblog import attach_job_log
from tests.conftest import Jobs
from tests.services import Worker, wait_for

BOUND = 50  # BATCHERY_MAX_IN_BROKER here: small, so that the jobs below are many times over it
HUGE = 1_000_000  # a job's `workers`


@pytest.fixture(scope="module")
def bounded(settings, worker_env, tmp_path_factory):
    """An API with BATCHERY_MAX_IN_BROKER = BOUND and a worker, on a queue of their own (the
    worker is not told the bound: the job carries it)."""
    queue = f"window-{uuid.uuid4().hex[:8]}"
    own = dataclasses.replace(settings, queue=queue, max_in_broker=BOUND, watchdog_seconds=0)
    app = create_app({"SETTINGS": own})
    env = {**worker_env, "BATCHERY_QUEUE": queue}
    process = Worker(env, tmp_path_factory.mktemp("window"), "window", concurrency=2)
    yield Jobs(app.test_client()), queue
    process.stop()


@pytest.fixture(autouse=True)
def job_logs_back_to_the_shared_app(flask_app):
    """The app built here takes the process's job log handler; give it back to the shared app."""
    yield
    attach_job_log(flask_app.extensions["batchery"].job_log)


def items_job(redis_server, count: int) -> dict:
    config = {"redis_url": redis_server.url, "tag": uuid.uuid4().hex[:8]}
    return {"workers": HUGE, "config": config, "item_list": {"items": list(range(count)), "batch_size": 1}}


def run_sampling(jobs: Jobs, r, queue: str, job_id: str, until, timeout: float = 120) -> tuple[dict, int]:
    """Poll the job until `until(status)` holds, sampling the broker queue's length (LLEN) all the
    while; the last status and the longest length seen."""
    longest = 0
    deadline = time.monotonic() + timeout
    while True:
        longest = max(longest, r.llen(queue))
        job = jobs.status("minimal", job_id)
        if until(job):
            return job, longest
        assert time.monotonic() < deadline, f"timed out; the job's last status: {job}"
        time.sleep(0.02)


def test_a_huge_workers_job_keeps_at_most_the_bound_in_the_broker_and_completes(bounded, r, redis_server):
    jobs, queue = bounded
    spec = jobs.submit("minimal", items_job(redis_server, 2000))
    assert r.llen(queue) <= BOUND  # the submission released no more than the bound
    job, longest = run_sampling(jobs, r, queue, spec["job_id"], lambda job: status.is_final(job["status"]))
    print(f"\n2,000 batches, workers {HUGE:,}: the broker's queue held at most {longest} (bound {BOUND})")
    assert job["status"] == status.SUCCEEDED, job
    assert job["batch_metrics"]["succeeded"] == 2000
    assert 0 < longest <= BOUND
    assert int(r.hget(f"batchery:job:{spec['job_id']}", "released")) == 2000  # each batch released once


def test_a_stopped_huge_job_leaves_at_most_the_bound_to_skip_and_the_next_job_starts_soon(bounded, r, redis_server):
    jobs, queue = bounded
    spec = jobs.submit("minimal", items_job(redis_server, 5000))
    _, longest = run_sampling(jobs, r, queue, spec["job_id"], lambda job: job["batch_metrics"]["succeeded"] >= 200)
    assert jobs.client.delete(f"/batch/minimal?jobID={spec['job_id']}").status_code == 200
    left = r.llen(queue)
    submitted = time.monotonic()
    after = jobs.submit("minimal", items_job(redis_server, 4))
    job = wait_for(
        lambda: (found := jobs.status("minimal", after["job_id"]))["batch_metrics"]["succeeded"] >= 1 and found,
        timeout=60,
        interval=0.05,
        what="the next job's first batch",
    )
    started = time.monotonic() - submitted
    print(f"\nstopped with {left} of its messages in the broker; the next job's first batch ended {started:.2f}s later")
    assert longest <= BOUND and left <= BOUND
    assert started < 30, job  # generous: a busy 2-core machine skips the bound's messages in about a second
    assert jobs.wait_final("minimal", after["job_id"])["status"] == status.SUCCEEDED

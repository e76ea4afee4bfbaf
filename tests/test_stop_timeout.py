"""Stopping a job and timing it out: no batch starts after either."""

from __future__ import annotations

import json
import time

from app.model import status
from app.store import keys
from tests.conftest import BOTH_BROKERS
from tests.services import wait_for

pytestmark = BOTH_BROKERS

# The worker checks the job's state, then calls predict, which notes the time first thing: a batch
# that passed the check a moment before the stop or the deadline notes a time a moment after it.
CHECK_TO_CALL = 0.25


def starts(r, probe_config: dict, job_id: str) -> list[float]:
    return [json.loads(s)["t"] for s in r.lrange(f"probe:{probe_config['tag']}:starts:{job_id}", 0, -1)]


def settled(r, job_id: str) -> bool:
    """Every batch released to the broker has come back (run to the end, or skipped)."""
    released, succeeded, failed, skipped = r.hmget(
        keys.job(job_id), "released", "succeeded", "failed_batches", "skipped"
    )
    return int(released) == int(succeeded) + int(failed) + int(skipped)


def test_stop_returns_the_cortex_message_and_no_batch_starts_after_it(client, jobs, worker, r, probe_config):
    spec = jobs.submit(
        "probe",
        {
            "workers": 3,
            "item_list": {"items": list(range(200)), "batch_size": 1},
            "config": dict(probe_config, sleep=0.1),
        },
    )
    wait_for(lambda: len(starts(r, probe_config, spec["job_id"])) >= 6, what="batches to start")
    response = client.delete(f"/batch/probe?jobID={spec['job_id']}")
    stopped_at = time.time()
    assert response.status_code == 200
    assert response.get_json() == {"message": f"stopped job {spec['job_id']}"}

    job = jobs.status("probe", spec["job_id"])
    assert job["status"] == status.STOPPED
    assert "end_time" in job
    # as on Cortex, whose ended job's queue was gone: a script waiting for 0 does not spin forever
    assert (job["batches_in_queue"], job["total_batch_count"]) == (0, 200)
    wait_for(lambda: settled(r, spec["job_id"]), what="batches in flight to come back")
    started = starts(r, probe_config, spec["job_id"])
    assert max(started) < stopped_at + CHECK_TO_CALL
    assert len(started) < 200
    assert jobs.status("probe", spec["job_id"])["status"] == status.STOPPED
    assert not r.exists(keys.backlog(spec["job_id"]))  # the backlog is dropped
    assert r.lrange(f"probe:{probe_config['tag']}:complete", 0, -1) == []  # a stopped job does not complete


def test_stopping_a_finished_job_is_a_400_that_says_so(client, jobs, worker, probe_config):
    spec = jobs.submit("probe", {"workers": 1, "item_list": {"items": [1], "batch_size": 1}, "config": probe_config})
    jobs.wait_final("probe", spec["job_id"])
    response = client.delete(f"/batch/probe?jobID={spec['job_id']}")
    assert response.status_code == 400
    body = response.get_json()
    assert body["kind"] == "job_not_running"
    assert "status_succeeded" in body["message"]
    assert jobs.status("probe", spec["job_id"])["status"] == status.SUCCEEDED


def test_stopping_twice_says_the_job_already_stopped(client, jobs, worker, probe_config):
    spec = jobs.submit(
        "probe",
        {
            "workers": 1,
            "item_list": {"items": list(range(20)), "batch_size": 1},
            "config": dict(probe_config, sleep=0.2),
        },
    )
    assert client.delete(f"/batch/probe?jobID={spec['job_id']}").status_code == 200
    again = client.delete(f"/batch/probe?jobID={spec['job_id']}")
    assert again.status_code == 400
    assert "status_stopped" in again.get_json()["message"]


def test_stopping_an_unknown_job_is_a_404(client, worker):
    response = client.delete("/batch/probe?jobID=0000000000000000")
    assert response.status_code == 404
    assert response.get_json()["kind"] == "job_not_found"


def test_job_past_its_timeout_is_timed_out_at_once_and_starts_nothing_more(jobs, worker, r, probe_config):
    spec = jobs.submit(
        "probe",
        {
            "workers": 1,
            "timeout": 2,
            "item_list": {"items": list(range(100)), "batch_size": 1},
            "config": dict(probe_config, sleep=0.3),
        },
    )
    created = float(r.hget(keys.job(spec["job_id"]), "created"))
    deadline = created + 2
    job = wait_for(lambda: _timed_out(jobs, spec["job_id"]), timeout=60, interval=0.05, what="the timeout")
    observed = time.time()
    assert observed - deadline < 2.0
    assert "timeout of 2 seconds" in job["message"]
    wait_for(lambda: settled(r, spec["job_id"]), what="batches in flight to come back")
    started = starts(r, probe_config, spec["job_id"])
    assert started, "some batches ran before the deadline"
    assert max(started) < deadline + CHECK_TO_CALL
    assert len(started) < 100
    assert jobs.status("probe", spec["job_id"])["status"] == status.TIMED_OUT


def _timed_out(jobs, job_id):
    job = jobs.status("probe", job_id)
    return job if job["status"] == status.TIMED_OUT else None


def test_timeout_with_nobody_asking_still_stops_batches(jobs, worker, r, probe_config):
    """Workers check the deadline themselves before each batch: no status poll is needed."""
    spec = jobs.submit(
        "probe",
        {
            "workers": 2,
            "timeout": 1,
            "item_list": {"items": list(range(60)), "batch_size": 1},
            "config": dict(probe_config, sleep=0.2),
        },
    )
    deadline = float(r.hget(keys.job(spec["job_id"]), "created")) + 1
    wait_for(lambda: r.hget(keys.job(spec["job_id"]), "status") == status.TIMED_OUT, what="workers to time it out")
    wait_for(lambda: settled(r, spec["job_id"]), what="batches in flight to come back")
    assert max(starts(r, probe_config, spec["job_id"])) < deadline + CHECK_TO_CALL


def test_a_stop_during_on_job_complete_stands_and_the_worker_says_so(client, jobs, worker, r, probe_config):
    """on_job_complete is not interrupted; the job stays stopped, and the worker's log said
    `ended: status_succeeded` as it returned."""
    config = dict(probe_config, complete_sleep=5)  # time for the DELETE to land inside it
    spec = jobs.submit("probe", {"workers": 1, "item_list": {"items": [1], "batch_size": 1}, "config": config})
    complete = f"probe:{probe_config['tag']}:complete"
    wait_for(lambda: spec["job_id"] in r.lrange(complete, 0, -1), what="on_job_complete to begin")
    assert client.delete(f"/batch/probe?jobID={spec['job_id']}").status_code == 200
    said = f"job {spec['job_id']} ended: "
    line = wait_for(
        lambda: next((line for line in worker.output().splitlines() if said in line), None),
        what="the finalizer to end",
    )
    assert f"{said}status_stopped (on_job_complete had begun before it and ran to its end)" in line
    assert jobs.status("probe", spec["job_id"])["status"] == status.STOPPED

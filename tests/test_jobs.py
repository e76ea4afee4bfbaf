"""A job end to end through real worker processes: batches, parallelism, status, predictors."""

from __future__ import annotations

import json

import pytest

from app.model import status
from app.web.responses import JobStatusSchema, WorkerCountsSchema
from tests.conftest import BOTH_BROKERS
from tests.services import wait_for
from tests.shapes import answer_keys, required_keys

pytestmark = BOTH_BROKERS


def items(n: int) -> list[int]:
    return list(range(n))


def test_item_list_job_runs_every_batch_with_its_payload(jobs, worker, r, probe_config):
    spec = jobs.submit(
        "minimal", {"workers": 2, "item_list": {"items": items(7), "batch_size": 3}, "config": probe_config}
    )
    job = jobs.wait_final("minimal", spec["job_id"])
    assert job["status"] == status.SUCCEEDED
    payloads = sorted(json.loads(p) for p in r.lrange(f"minimal:{probe_config['tag']}:payloads", 0, -1))
    assert payloads == [[0, 1, 2], [3, 4, 5], [6]]
    assert job["batch_metrics"]["succeeded"] == 3
    assert job["batch_metrics"]["failed"] == 0
    assert job["batches_in_queue"] == 0
    assert job["total_batch_count"] == 3


def test_status_has_every_field_of_the_reference_page_while_running_and_after(jobs, worker, probe_config):
    body = {
        "workers": 1,
        "timeout": 600,
        "item_list": {"items": items(6), "batch_size": 1},
        "config": dict(probe_config, sleep=0.3),
    }
    spec = jobs.submit("probe", body)
    running = wait_for(lambda: _running_batch(jobs, spec["job_id"]), timeout=60, what="a batch to run")
    for key in required_keys(JobStatusSchema) | {"worker_counts"}:  # worker_counts: while in progress
        assert key in running, key
    assert running["status"] == status.RUNNING
    assert set(running["worker_counts"]) == answer_keys(WorkerCountsSchema)
    assert running["worker_counts"]["running"] == 1
    assert 0 < running["batches_in_queue"] <= 6
    assert "end_time" not in running

    done = jobs.wait_final("probe", spec["job_id"])
    assert done["status"] == status.SUCCEEDED
    assert done["batch_metrics"]["succeeded"] == 6
    assert 0.3 <= done["batch_metrics"]["avg_time_per_batch"] < 5
    # the name a Cortex 0.28 cluster sent, for scripts written against one
    assert done["batch_metrics"]["average_time_per_batch"] == done["batch_metrics"]["avg_time_per_batch"]
    assert (done["timeout"], done["sqs_dead_letter_queue"]) == (600, None)
    assert done["end_time"] >= done["start_time"] >= done["created_time"]
    assert "worker_counts" not in done  # Cortex shows worker counts only while a job runs


def _running_batch(jobs, job_id):
    job = jobs.status("probe", job_id)
    return job if job.get("worker_counts", {}).get("running") == 1 else None


def test_full_status_response_has_endpoint_and_api_spec(client, jobs, worker, probe_config):
    spec = jobs.submit("probe", {"workers": 1, "item_list": {"items": [1], "batch_size": 1}, "config": probe_config})
    jobs.wait_final("probe", spec["job_id"])
    body = client.get(f"/batch/probe?jobID={spec['job_id']}").get_json()
    assert body["endpoint"].endswith("/batch/probe")
    assert body["api_spec"]["name"] == "probe"
    assert body["api_spec"]["predictor"]["path"] == "probe.py"
    assert "predictor_file" not in body["api_spec"]  # no paths of the server's disk


def test_never_more_than_workers_batches_at_once_and_the_cap_is_reached(jobs, worker, r, probe_config):
    # The fleet has 4 pool processes; the job asks for 2.
    spec = jobs.submit(
        "probe",
        {"workers": 2, "item_list": {"items": items(16), "batch_size": 1}, "config": dict(probe_config, sleep=0.2)},
    )
    assert jobs.wait_final("probe", spec["job_id"])["status"] == status.SUCCEEDED
    assert int(r.get(f"probe:{probe_config['tag']}:max:{spec['job_id']}")) == 2


def test_workers_one_runs_batches_one_at_a_time(jobs, worker, r, probe_config):
    spec = jobs.submit(
        "probe",
        {"workers": 1, "item_list": {"items": items(8), "batch_size": 1}, "config": dict(probe_config, sleep=0.1)},
    )
    assert jobs.wait_final("probe", spec["job_id"])["status"] == status.SUCCEEDED
    assert int(r.get(f"probe:{probe_config['tag']}:max:{spec['job_id']}")) == 1


def test_small_job_behind_a_large_one_does_not_wait_for_it(jobs, worker, probe_config):
    large = jobs.submit(
        "probe",
        {"workers": 2, "item_list": {"items": items(400), "batch_size": 1}, "config": dict(probe_config, sleep=0.05)},
    )
    wait_for(lambda: jobs.status("probe", large["job_id"])["batch_metrics"]["succeeded"] >= 4, what="large to run")
    small = jobs.submit(
        "probe", {"workers": 2, "item_list": {"items": items(4), "batch_size": 1}, "config": probe_config}
    )
    assert jobs.wait_final("probe", small["job_id"])["status"] == status.SUCCEEDED
    still = jobs.status("probe", large["job_id"])
    assert still["status"] == status.RUNNING
    assert still["batches_in_queue"] > 100
    client_stop = jobs.client.delete(f"/batch/probe?jobID={large['job_id']}")
    assert client_stop.status_code == 200


def test_predictor_is_initialised_once_per_process_per_job(jobs, worker, r, probe_config):
    spec = jobs.submit(
        "probe",
        {"workers": 4, "item_list": {"items": items(40), "batch_size": 1}, "config": dict(probe_config, sleep=0.02)},
    )
    assert jobs.wait_final("probe", spec["job_id"])["status"] == status.SUCCEEDED
    inits = [json.loads(i) for i in r.lrange(f"probe:{probe_config['tag']}:inits", 0, -1)]
    pids = [i["pid"] for i in inits if i["job"] == spec["job_id"]]
    assert len(pids) == len(set(pids)), f"a process initialised the predictor twice: {pids}"
    assert 1 <= len(pids) <= 4


def test_predictor_gets_merged_config_and_job_spec(jobs, worker, r, probe_config):
    config = dict(probe_config, nested={"override": "job", "new": 1}, job_level=True)
    spec = jobs.submit("probe", {"workers": 1, "item_list": {"items": [1, 2, 3], "batch_size": 2}, "config": config})
    assert spec["config"]["api_level"] == "from-api"
    assert spec["config"]["nested"] == {"keep": "api", "override": "job", "new": 1}
    jobs.wait_final("probe", spec["job_id"])
    seen = json.loads(r.get(f"probe:{probe_config['tag']}:config:{spec['job_id']}"))
    assert seen == spec["config"]
    job_spec = json.loads(r.get(f"probe:{probe_config['tag']}:job_spec:{spec['job_id']}"))
    assert job_spec["job_id"] == spec["job_id"]
    assert job_spec["workers"] == 1
    assert job_spec["api_name"] == "probe"
    # the fields of Cortex's job_spec that the submission's answer has not (a KeyError before)
    assert job_spec["total_batch_count"] == 2
    assert job_spec["start_time"] == jobs.status("probe", spec["job_id"])["start_time"]


def test_on_job_complete_runs_once_per_job_over_many_concurrent_jobs(jobs, worker, r, probe_config):
    submitted = [
        jobs.submit(
            "probe",
            {"workers": 1 + n % 3, "item_list": {"items": items(5 + n), "batch_size": 1}, "config": probe_config},
        )
        for n in range(8)
    ]
    for spec in submitted:
        assert jobs.wait_final("probe", spec["job_id"])["status"] == status.SUCCEEDED
    completions = r.lrange(f"probe:{probe_config['tag']}:complete", 0, -1)
    assert sorted(completions) == sorted(spec["job_id"] for spec in submitted)


def test_on_job_complete_runs_after_the_last_batch(jobs, worker, r, probe_config):
    spec = jobs.submit(
        "probe",
        {"workers": 3, "item_list": {"items": items(9), "batch_size": 1}, "config": dict(probe_config, sleep=0.05)},
    )
    jobs.wait_final("probe", spec["job_id"])
    done = r.llen(f"probe:{probe_config['tag']}:done:{spec['job_id']}")
    assert done == 9
    assert r.lrange(f"probe:{probe_config['tag']}:complete", 0, -1) == [spec["job_id"]]


def test_on_job_complete_error_makes_worker_error_with_its_message(jobs, worker, probe_config):
    spec = jobs.submit(
        "probe",
        {
            "workers": 1,
            "item_list": {"items": [1, 2], "batch_size": 1},
            "config": dict(probe_config, complete_raises=True),
        },
    )
    job = jobs.wait_final("probe", spec["job_id"])
    assert job["status"] == status.WORKER_ERROR
    assert "on_job_complete exploded" in job["message"]
    assert job["batch_metrics"]["succeeded"] == 2


def test_predictor_init_error_makes_worker_error_with_its_traceback_in_the_log(client, jobs, worker, probe_config):
    spec = jobs.submit(
        "probe",
        {"workers": 1, "item_list": {"items": [1], "batch_size": 1}, "config": {"tag": "x", "redis_url": "not-a-url"}},
    )
    job = jobs.wait_final("probe", spec["job_id"])
    assert job["status"] == status.WORKER_ERROR
    assert "PythonPredictor.__init__ raised" in job["message"]
    lines = client.get(f"/batch/probe/logs?jobID={spec['job_id']}").get_json()["lines"]
    (error,) = [line for line in lines if line["level"] == "error"]
    assert 'probe.py", line' in error["traceback"]  # where in the predictor (the message alone said little)


def test_list_shows_jobs_in_progress_first_then_recent_newest_first(client, jobs, worker, probe_config):
    finished = [
        jobs.submit("probe", {"workers": 1, "item_list": {"items": [n], "batch_size": 1}, "config": probe_config})
        for n in range(2)
    ]
    for spec in finished:
        jobs.wait_final("probe", spec["job_id"])
    running = jobs.submit(
        "probe",
        {"workers": 1, "item_list": {"items": items(50), "batch_size": 1}, "config": dict(probe_config, sleep=0.2)},
    )
    listing = client.get("/batch/probe").get_json()
    ids = [job["job_id"] for job in listing["batch_job_statuses"]]
    assert ids[0] == running["job_id"]
    assert ids.index(finished[1]["job_id"]) < ids.index(finished[0]["job_id"])
    assert listing["spec"]["name"] == "probe"
    assert client.delete(f"/batch/probe?jobID={running['job_id']}").status_code == 200


@pytest.mark.parametrize(("start_method", "batches"), [("fork", 30), ("spawn", 4)])
def test_a_predictor_can_start_processes_of_its_own(jobs, worker, r, probe_config, start_method, batches):
    """A multiprocessing Pool in predict (torch's DataLoader, joblib): Celery's pool processes are
    daemonic, and multiprocessing refused them children; spawn could not pickle billiard's process
    key; and a forked pool's `with` block hung now and then (its workers kept the pool process's
    SIGTERM handler: 30 batches hung every time)."""
    config = dict(probe_config, pool=start_method)
    body = {"workers": 2, "config": config, "item_list": {"items": items(batches), "batch_size": 1}}
    spec = jobs.submit("probe", body)
    job = jobs.wait_final("probe", spec["job_id"])
    assert job["status"] == status.SUCCEEDED, job
    assert r.lrange(f"probe:{probe_config['tag']}:pool:{spec['job_id']}", 0, -1) == ["[1, 2]"] * batches

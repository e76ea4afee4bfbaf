"""The API process killed for real (gunicorn's worker, SIGKILL) in the middle of a submission and
in the middle of a run: no job is left in status_enqueuing or status_running."""

from __future__ import annotations

import threading

import pytest
import requests

from app.model import status
from app.store import keys
from tests.conftest import PREDICTORS
from tests.services import Gunicorn, wait_for

API = "probe"
BIG = 500_000  # items of batch_size 1: storing them takes the request seconds, time to kill it


@pytest.fixture
def api(worker_env, tmp_path):
    """gunicorn on the shared Redis and queue, with a watchdog that sweeps twice a second and
    presumes a request dead 3 s after it created its job."""
    env = dict(
        worker_env,
        BATCHERY_APIS=str(PREDICTORS / "cortex.yaml"),
        BATCHERY_WATCHDOG_SECONDS="0.5",
        BATCHERY_ENQUEUE_LEASE="3",
    )
    server = Gunicorn(env, tmp_path)
    yield server
    server.stop()


def job_status(api: Gunicorn, job_id: str) -> dict:
    response = requests.get(f"{api.url}/batch/{API}", params={"jobID": job_id}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["job_status"]


def wait_final(api: Gunicorn, job_id: str, timeout: float = 120) -> dict:
    return wait_for(
        lambda: (job := job_status(api, job_id)) and status.is_final(job["status"]) and job,
        timeout=timeout,
        interval=0.2,
        what=f"job {job_id} to end",
    )


def test_api_killed_while_storing_an_item_list_job_ends_it_enqueue_failed(api, r, probe_config):
    before = set(r.zrange(keys.api_jobs(API), 0, -1))
    body = {"workers": 2, "config": probe_config, "item_list": {"items": list(range(BIG)), "batch_size": 1}}
    answers: list = []

    def submit() -> None:
        try:
            answers.append(requests.post(f"{api.url}/batch/{API}", json=body, timeout=120))
        except requests.ConnectionError as err:  # the process answering died
            answers.append(err)

    thread = threading.Thread(target=submit)
    thread.start()

    def half_stored() -> str | None:
        for job_id in set(r.zrange(keys.api_jobs(API), 0, -1)) - before:
            total = int(r.hget(keys.job(job_id), "total") or 0)
            if 0 < total < BIG // 2:
                return job_id
        return None

    job_id = wait_for(half_stored, timeout=60, interval=0.005, what="the job's batches to be half stored")
    api.kill_worker()
    thread.join(120)
    assert isinstance(answers[0], requests.ConnectionError), answers  # the client never got a job id
    job = wait_final(api, job_id, timeout=60)  # the new API process's watchdog ends it
    assert job["status"] == status.ENQUEUE_FAILED
    assert "the API process storing the job's batches died; submit the job again" in job["message"]
    assert 0 < int(r.hget(keys.job(job_id), "total")) < BIG


def test_api_killed_while_a_job_runs_does_not_stop_it(api, worker, r, probe_config):
    config = {**probe_config, "sleep": 0.1}
    body = {"workers": 2, "config": config, "item_list": {"items": list(range(30)), "batch_size": 1}}
    response = requests.post(f"{api.url}/batch/{API}", json=body, timeout=30)
    assert response.status_code == 200, response.text
    job_id = response.json()["job_id"]
    wait_for(lambda: job_status(api, job_id)["batch_metrics"]["succeeded"] >= 3, what="the job to be under way")
    api.kill_worker()
    job = wait_final(api, job_id)
    assert job["status"] == status.SUCCEEDED
    assert job["batch_metrics"]["succeeded"] == 30
    assert r.lrange(f"{API}:{probe_config['tag']}:complete", 0, -1) == [job_id]

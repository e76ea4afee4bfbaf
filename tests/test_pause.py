"""Pausing and resuming a job: nothing of it starts while it is paused, a resume goes on where it
stopped (every batch run once), paused time is not timeout time, and a pause outlives restarts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid

import boto3
import pytest
import redis
import requests

from app.client import BatcheryAPIError, Client
from app.model import status
from app.model.job import build_spec, now
from app.store import keys
from app.store.job_store import JobStore
from tests.conftest import BOTH_BROKERS, PREDICTORS, Jobs
from tests.services import ROOT, Gunicorn, RedisServer, Worker, wait_for

# The worker checks the job's state, then calls predict, which notes the time first thing: a batch
# that passed the check a moment before the pause notes a time a moment after it.
CHECK_TO_CALL = 0.25


def starts(r, probe_config: dict, job_id: str) -> list[float]:
    return [json.loads(s)["t"] for s in r.lrange(f"probe:{probe_config['tag']}:starts:{job_id}", 0, -1)]


def runs(r, probe_config: dict, job_id: str) -> dict[str, str]:
    """Batch id -> how many times predict ran it."""
    return r.hgetall(f"probe:{probe_config['tag']}:deliveries:{job_id}")


def all_held(r, job_id: str) -> bool:
    """Every batch of the paused job still in flight was delivered and held: none can start now."""
    in_flight = r.hkeys(keys.inflight(job_id))
    return all(r.hexists(keys.deliveries(job_id), f"{batch}:h") for batch in in_flight)


def control(client, job_id: str, verb: str, api: str = "probe"):
    return client.post(f"/batch/{api}/{job_id}/{verb}")


def long_job(jobs: Jobs, probe_config: dict, items: int = 20, workers: int = 2, **extra) -> dict:
    config = dict(probe_config, sleep=0.2)
    return jobs.submit(
        "probe",
        {"workers": workers, "config": config, "item_list": {"items": list(range(items)), "batch_size": 1}, **extra},
    )


@BOTH_BROKERS
def test_a_paused_job_starts_nothing_and_resumes_where_it_stopped(client, jobs, worker, r, probe_config):
    total, workers = 30, 6  # more than the worker's 4 processes: some batches wait on the broker
    spec = long_job(jobs, probe_config, items=total, workers=workers)
    job_id = spec["job_id"]
    wait_for(lambda: len(starts(r, probe_config, job_id)) >= 3, what="batches to start")
    response = control(client, job_id, "pause")
    paused_at = time.time()
    assert response.status_code == 200, response.get_data(as_text=True)
    answer = response.get_json()
    assert answer["job_status"]["status"] == status.PAUSED
    assert set(answer) == {"job_status", "endpoint", "api_spec"}  # as GET ?jobID= answers

    # the batches inside predict finish and are counted; those delivered since are held
    wait_for(lambda: jobs.status("probe", job_id)["worker_counts"]["running"] == 0, what="running batches to end")
    wait_for(lambda: all_held(r, job_id), what="the batches in flight to be delivered and held")
    assert r.hlen(keys.inflight(job_id)) > 0  # some were delivered while paused: they wait, held
    job = jobs.status("probe", job_id)
    assert job["status"] == status.PAUSED
    succeeded = job["batch_metrics"]["succeeded"]
    assert 0 < succeeded < total
    assert job["batches_in_queue"] == total - succeeded  # kept, not 0 as for a stop
    assert job["worker_counts"] == {**job["worker_counts"], "pending": 0, "running": 0, "stalled": 0}
    assert job["batch_metrics"]["failed"] == 0  # a held delivery is no failed attempt
    started = starts(r, probe_config, job_id)
    assert max(started) < paused_at + CHECK_TO_CALL
    assert len(started) == succeeded  # nothing started that did not finish

    again = control(client, job_id, "pause")  # changes nothing
    assert again.status_code == 200 and again.get_json()["job_status"]["status"] == status.PAUSED
    assert control(client, job_id, "resume").get_json()["job_status"]["status"] == status.RUNNING

    job = jobs.wait_final("probe", job_id)
    assert job["status"] == status.SUCCEEDED
    assert (job["batch_metrics"]["succeeded"], job["batch_metrics"]["failed"]) == (total, 0)
    assert runs(r, probe_config, job_id) == {str(i): "1" for i in range(total)}  # each once
    assert r.lrange(f"probe:{probe_config['tag']}:complete", 0, -1) == [job_id]
    assert int(r.get(f"probe:{probe_config['tag']}:max:{job_id}")) <= workers  # the same cap
    lines = [line["message"] for line in client.get(f"/batch/probe/logs?jobID={job_id}").get_json()["lines"]]
    assert any(line.startswith("job paused") for line in lines), lines
    assert any(line.startswith("job resumed") for line in lines), lines


def test_time_paused_does_not_count_toward_the_timeout(client, jobs, worker, r, probe_config):
    timeout = 4  # the job needs under a second of it: 4 batches of 0.2 s, paused at once
    spec = long_job(jobs, probe_config, items=4, workers=1, timeout=timeout)
    job_id = spec["job_id"]
    assert control(client, job_id, "pause").status_code == 200
    paused_at = time.time()
    deadline = float(r.hget(keys.job(job_id), "created")) + timeout

    def past_the_deadline_and_still_paused() -> bool:
        assert jobs.status("probe", job_id)["status"] == status.PAUSED  # each read checks the deadline
        return time.time() > deadline + 1

    wait_for(past_the_deadline_and_still_paused, timeout=30, interval=0.2, what="the deadline to pass")
    assert control(client, job_id, "resume").status_code == 200
    resumed_at = time.time()
    moved = float(r.hget(keys.job(job_id), "deadline"))
    assert deadline + (resumed_at - paused_at) - 0.5 < moved <= deadline + (resumed_at - paused_at) + 0.5
    job = jobs.wait_final("probe", job_id)
    assert job["status"] == status.SUCCEEDED, job


def test_delete_stops_a_paused_job_and_an_ended_job_cannot_be_paused_or_resumed(client, jobs, worker, r, probe_config):
    spec = long_job(jobs, probe_config, items=20, workers=1)
    job_id = spec["job_id"]
    assert control(client, job_id, "pause").status_code == 200
    stopped = client.delete(f"/batch/probe?jobID={job_id}")
    assert stopped.status_code == 200 and stopped.get_json() == {"message": f"stopped job {job_id}"}
    assert jobs.status("probe", job_id)["status"] == status.STOPPED
    for verb in ("pause", "resume"):
        response = control(client, job_id, verb)
        assert response.status_code == 400
        assert response.get_json() == {
            "kind": "job_not_running",
            "message": f"job {job_id} cannot be {verb}d: it already ended with status_stopped",
        }
    assert jobs.status("probe", job_id)["status"] == status.STOPPED
    assert r.lrange(f"probe:{probe_config['tag']}:complete", 0, -1) == []  # a stopped job does not complete


def test_resuming_a_running_job_changes_nothing_and_bad_requests_are_4xx(client, jobs, worker, probe_config):
    spec = long_job(jobs, probe_config, items=6, workers=1)
    job_id = spec["job_id"]
    running = control(client, job_id, "resume")
    assert running.status_code == 200
    assert running.get_json()["job_status"]["status"] in (status.ENQUEUING, status.RUNNING)
    errors = {
        f"/batch/nope/{job_id}/pause": (404, "api_not_found"),
        "/batch/probe/0000000000000000/pause": (404, "job_not_found"),
        "/batch/probe/not.a.job/resume": (400, "invalid_request"),
        f"/batch/probe/{job_id}/pause?jobID={job_id}": (400, "invalid_request"),
    }
    for path, (code, kind) in errors.items():
        response = client.post(path)
        assert (response.status_code, response.get_json()["kind"]) == (code, kind), path
    with_body = client.post(f"/batch/probe/{job_id}/pause", data=json.dumps({"workers": 3}))
    assert with_body.status_code == 400
    assert with_body.get_json()["message"] == f"/batch/probe/{job_id}/pause takes no body: send none, or {{}}"
    too_large = client.post(f"/batch/probe/{job_id}/pause", data=b" " * (10 * 2**20 + 1))
    assert (too_large.status_code, too_large.get_json()["kind"]) == (413, "payload_too_large")
    assert control(client, job_id, "resume").get_json()["job_status"]["status"] != status.PAUSED  # nothing paused it
    job = jobs.wait_final("probe", job_id)
    assert job["status"] == status.SUCCEEDED
    finished = control(client, job_id, "pause")
    assert finished.status_code == 400
    assert "it already ended with status_succeeded" in finished.get_json()["message"]


def test_the_store_holds_what_is_delivered_while_paused_and_publishes_it_again_on_resume(flask_app):
    """The Lua calls alone, at chosen times: a held batch is no delivery, the watchdog does not take
    it for lost, its older message is superseded, and the deadline moves by the time paused."""
    services = flask_app.extensions["batchery"]
    store = JobStore(services.redis, services.settings.stalled_seconds)  # publishes nothing itself
    api = services.registry.get("probe")
    t0 = now()
    spec = build_spec(api, {"workers": 2, "config": {}, "timeout": 5}, services.submitter.queue_url, t0)
    store.create(spec, api, t0)
    assert len(store.append(spec, [f"{i} [{i}]" for i in range(4)], t0).released) == 2
    assert store.begin(spec, "0", "p", t0).action == "run"  # its predictor loading

    assert store.pause(spec, t0 + 1) == (True, status.PAUSED)
    assert store.pause(spec, t0 + 1) == (False, status.PAUSED)
    assert store.enqueued(spec, t0 + 1).released == []  # enqueued while paused: still paused, nothing released
    assert not store.proceed(spec, "0", "p", t0 + 1)  # loaded after the pause: it does not start
    assert not store.proceed(spec, "0", "p", t0 + 1)  # the same call sent again (its reply lost) undoes nothing more
    assert store.begin(spec, "1", "q", t0 + 1).reason == "paused"
    job = services.redis.hgetall(keys.job(spec["job_id"]))
    assert job[b"status"] == status.PAUSED.encode() and job[b"failed"] == b"0"
    assert services.redis.hget(keys.deliveries(spec["job_id"]), "0") == b"0"  # BEGIN's count undone
    state = store.state(spec["job_id"], "probe", t0 + 1000)  # long past the deadline, and still paused
    assert state["status"] == status.PAUSED
    assert state["worker_counts"] == {**state["worker_counts"], "pending": 0, "initializing": 0, "stalled": 0}
    assert store.republish(spec, t0 + 1000, t0 + 1000, t0 + 1000) == []  # held is not lost

    resumed = store.resume(spec, t0 + 1000)
    assert (resumed.changed, resumed.status) == (True, status.RUNNING)
    assert sorted(resumed.held) == [(1, "0 [0]"), (1, "1 [1]")]  # a new generation each
    assert resumed.outcome.released == [] and not resumed.outcome.finalize  # the window is full
    assert store.resume(spec, t0 + 1000).changed is False
    assert store.begin(spec, "0", "p", t0 + 1000, generation=0).reason == "superseded"
    assert store.begin(spec, "0", "p", t0 + 1000, generation=1).number == 1  # its first delivery
    assert store.state(spec["job_id"], "probe", t0 + 1000 + 3.9)["status"] == status.RUNNING  # 5 s of running
    assert store.state(spec["job_id"], "probe", t0 + 1000 + 4.1)["status"] == status.TIMED_OUT


@pytest.fixture
def restartable(settings, worker_env, tmp_path, probe_config):
    """Redis with append-only persistence, a worker and a gunicorn API of their own on it."""
    redis_server = RedisServer(tmp_path, {"appendonly": "yes", "appendfsync": "always"})
    queue = f"pause-restart-{probe_config['tag']}"
    env = dict(worker_env, REDIS_URL=redis_server.url, BATCHERY_QUEUE=queue, BATCHERY_VISIBILITY_TIMEOUT="10")
    worker = Worker(env, tmp_path, "pause-restart", concurrency=2)
    api = Gunicorn(dict(env, BATCHERY_APIS=str(PREDICTORS / "cortex.yaml"), BATCHERY_WATCHDOG_SECONDS="1"), tmp_path)
    yield redis_server, api, worker
    api.stop()
    worker.stop()
    redis_server.stop()


def test_a_paused_job_stays_paused_through_an_api_restart_and_a_redis_restart(restartable, r, probe_config):
    redis_server, api, worker = restartable
    client = Client(api.url)
    total = 12
    config = dict(probe_config, sleep=0.2)  # the probe records in the tests' own Redis, not restarted
    spec = client.submit(
        "probe", {"workers": 2, "config": config, "item_list": {"items": list(range(total)), "batch_size": 1}}
    )
    job_id = spec["job_id"]
    wait_for(lambda: starts(r, probe_config, job_id), what="a batch to start")
    assert client.pause("probe", job_id)["job_status"]["status"] == status.PAUSED
    paused_at = time.time()
    api.kill_worker()
    redis_server.restart(down=0.5, hard=True)
    job = wait_for(lambda: _status(api, job_id), timeout=60, interval=0.2, what="the API to answer after the restarts")
    assert job["status"] == status.PAUSED
    store = redis.Redis.from_url(redis_server.url, decode_responses=True)
    wait_for(lambda: all_held(store, job_id), what="the batches in flight to be held")
    assert max(starts(r, probe_config, job_id)) < paused_at + CHECK_TO_CALL
    assert client.resume("probe", job_id)["job_status"]["status"] == status.RUNNING
    job = client.wait("probe", job_id, timeout=120, poll=0.2)
    assert job["status"] == status.SUCCEEDED, job
    assert runs(r, probe_config, job_id) == {str(i): "1" for i in range(total)}
    assert worker.process.poll() is None


def _status(api: Gunicorn, job_id: str) -> dict | None:
    try:
        response = requests.get(f"{api.url}/batch/probe", params={"jobID": job_id}, timeout=10)
    except requests.ConnectionError:
        return None
    return response.json()["job_status"] if response.status_code == 200 else None


def test_the_client_and_the_cli_pause_and_resume(live_url, worker, redis_server, probe_config):
    client = Client(live_url, timeout=10)
    spec = client.submit(
        "probe",
        {
            "workers": 1,
            "config": dict(probe_config, sleep=0.2),
            "item_list": {"items": list(range(8)), "batch_size": 1},
        },
    )
    job_id = spec["job_id"]
    assert client.pause("probe", job_id)["job_status"]["status"] == status.PAUSED
    env = dict(os.environ, BATCHERY_URL=live_url)

    def batchery(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )

    paused = batchery("pause", "probe", job_id)
    assert paused.returncode == 0, paused.stderr
    assert re.fullmatch(rf"job {job_id}: paused, \d+ batches in queue\n", paused.stdout), paused.stdout
    resumed = batchery("-o", "json", "resume", "probe", job_id)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["job_status"]["status"] == status.RUNNING
    assert client.resume("probe", job_id)["job_status"]["status"] == status.RUNNING  # not paused: unchanged
    assert client.wait("probe", job_id, timeout=120, poll=0.2)["status"] == status.SUCCEEDED
    ended = batchery("pause", "probe", job_id)
    assert (ended.returncode, ended.stderr) == (
        1,
        f"error: job {job_id} cannot be paused: it already ended with status_succeeded\n",
    )
    with pytest.raises(BatcheryAPIError) as raised:
        client.resume("probe", job_id)
    assert (raised.value.status, raised.value.kind) == (400, "job_not_running")


def test_an_s3_job_paused_while_enqueuing_resumes_and_runs_every_batch_once(
    client, jobs, worker, r, moto, probe_config
):
    """Paused at once, the S3 enqueuer finishes reading into the backlog, or, had it not begun,
    the resume starts one: either way nothing starts while paused, and every batch runs once."""
    bucket = f"bucket-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    total = 8
    for i in range(total):
        s3.put_object(Bucket=bucket, Key=f"in/{i}.json", Body=b"{}")
    body = {
        "workers": 2,
        "config": dict(probe_config, sleep=0.1),
        "file_path_lister": {"s3_paths": [f"s3://{bucket}/in/"], "batch_size": 1},
    }
    job_id = jobs.submit("probe", body)["job_id"]
    assert control(client, job_id, "pause").get_json()["job_status"]["status"] == status.PAUSED
    paused_at = time.time()
    wait_for(lambda: jobs.status("probe", job_id)["worker_counts"]["running"] == 0, what="running batches to end")
    wait_for(lambda: all_held(r, job_id), what="the batches in flight to be held")
    assert jobs.status("probe", job_id)["status"] == status.PAUSED
    assert max(starts(r, probe_config, job_id), default=0) < paused_at + CHECK_TO_CALL
    assert control(client, job_id, "resume").status_code == 200
    job = jobs.wait_final("probe", job_id)
    assert job["status"] == status.SUCCEEDED, job
    assert (job["total_batch_count"], job["batch_metrics"]["succeeded"]) == (total, total)
    assert runs(r, probe_config, job_id) == {str(i): "1" for i in range(total)}

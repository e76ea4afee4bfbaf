"""Dedicated worker pools (issue 20.1, 20.2): `queue:` in cortex.yaml, workers serving the queues of
BATCHERY_QUEUES, the watchdog on every queue, a job whose queue no worker serves, and the demand
metric. Real workers, each serving one queue, beside the suite's shared worker."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

import boto3
import pytest
import yaml

from app import create_app
from app.broker.config import consumed_queues
from app.config import Settings
from app.errors import DeployError
from app.jobs.watchdog import Watchdog
from app.model import status
from app.model.job import build_spec, now
from app.model.queues import no_worker_message
from app.store.job_store import JobStore
from app.store.joblog import attach_job_log
from app.store.registry import read_deployments
from tests.conftest import BOTH_BROKERS, PREDICTORS, Jobs
from tests.services import Worker, wait_for
from tests.test_deploy_http import tar_gz, upload
from tests.test_metrics import parse, value

LOST = 3.0  # BATCHERY_LOST_SECONDS of this module's apps and workers


@pytest.fixture(autouse=True)
def job_logs_back_to_the_shared_app(flask_app):
    """The apps built here take the process's job log handler; give it back to the shared app."""
    yield
    attach_job_log(flask_app.extensions["batchery"].job_log)


def write_apis(folder, apis: list[dict]) -> str:
    """A cortex.yaml of `probe` APIs (name, and its extra keys), beside a copy of the probe."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "probe.py").write_text((PREDICTORS / "probe.py").read_text())
    entries = [{"kind": "BatchAPI", "predictor": {"type": "python", "path": "probe.py"}, **api} for api in apis]
    (folder / "cortex.yaml").write_text(yaml.safe_dump(entries))
    return str(folder / "cortex.yaml")


class Pools:
    """An API app whose default queue no worker serves, with two APIs on two dedicated queues."""

    def __init__(self, settings, tmp_path, tag: str):
        self.tag = tag
        self.queues = {"a": f"pool-a-{tag}", "b": f"pool-b-{tag}", "idle": f"idle-{tag}"}
        self.apis = {name: f"{name}-{tag}" for name in self.queues}
        apis = [{"name": self.apis[name], "queue": queue} for name, queue in self.queues.items()]
        apis.append({"name": f"gpu-{tag}", "compute": {"gpu": 1}})  # no queue: the `gpu` default
        apis.append({"name": f"plain-{tag}"})
        apis_file = write_apis(tmp_path / "apis", apis)
        self.settings = dataclasses.replace(
            settings, queue=f"default-{tag}", apis_file=apis_file, watchdog_seconds=0, lost_seconds=LOST
        )
        self.app = create_app({"SETTINGS": self.settings})
        self.services = self.app.extensions["batchery"]
        self.client = self.app.test_client()
        self.jobs = Jobs(self.client)

    def worker(self, worker_env, logdir, pool: str, concurrency: int = 2, **env: str) -> Worker:
        """A worker serving the pool's queue (and its control queue: BATCHERY_LANE=all)."""
        env = {**worker_env, "BATCHERY_QUEUES": self.queues[pool], "BATCHERY_LOST_SECONDS": str(LOST), **env}
        return Worker(env, logdir, f"{pool}-{self.tag}-{uuid.uuid4().hex[:4]}", concurrency=concurrency)

    def inits(self, r, job_id: str) -> list[int]:
        """The pids of the processes that loaded the job's predictor, once per load."""
        lines = [json.loads(line) for line in r.lrange(f"probe:{self.tag}:inits", 0, -1)]
        return [line["pid"] for line in lines if line["job"] == job_id]

    def config(self, redis_url: str, **extra) -> dict:
        return {"redis_url": redis_url, "tag": self.tag, **extra}


@pytest.fixture
def pools(settings, tmp_path) -> Pools:
    return Pools(settings, tmp_path, uuid.uuid4().hex[:8])


@pytest.fixture
def two_pools(pools, worker_env, tmp_path):
    """Pool `a` and pool `b`: a worker each, serving only its own queue."""
    a = pools.worker(worker_env, tmp_path, "a")
    try:
        b = pools.worker(worker_env, tmp_path, "b")
        try:
            yield pools, a, b
        finally:
            b.stop()
    finally:
        a.stop()


# --- settings ----------------------------------------------------------------------------------


def test_a_worker_consumes_its_queues_and_their_control_queues_by_its_lane():
    default = Settings.from_env({})
    assert consumed_queues(default) == ["batchery", "batchery-control"]
    pool = Settings.from_env({"BATCHERY_QUEUES": "gpu, big-gpu", "BATCHERY_QUEUE": "cpu"})
    assert consumed_queues(pool) == ["gpu", "big-gpu", "gpu-control", "big-gpu-control"]
    control = Settings.from_env({"BATCHERY_QUEUES": "gpu", "BATCHERY_LANE": "control"})
    assert consumed_queues(control) == ["gpu-control"]
    with pytest.raises(ValueError, match="BATCHERY_LANE='batches': use all"):
        Settings.from_env({"BATCHERY_LANE": "batches"})


# --- deploying ---------------------------------------------------------------------------------


def test_the_queue_is_checked_at_deploy_and_gpu_apis_default_to_the_gpu_queue(tmp_path, client):
    good = read_deployments(write_apis(tmp_path / "good", [{"name": "a", "queue": "gpu-big_1"}, {"name": "b"}]))
    assert good[0].spec["queue"] == "gpu-big_1"
    assert "queue" not in good[1].spec  # the default queue of the API process that submits its jobs
    for bad, why in (
        ("a b", "must be 1 to 64 letters, digits, '_' or '-'"),
        ("x" * 65, "must be 1 to 64"),
        ("", "must be 1 to 64"),
        ("gpu-control", "must not end in '-control'"),
        (7, "must be 1 to 64"),
    ):
        folder = tmp_path / f"bad-{uuid.uuid4().hex[:6]}"
        with pytest.raises(DeployError, match=why):
            read_deployments(write_apis(folder, [{"name": "c", "queue": bad}]))
    # over HTTP: a 400 saying so (the CLI's `batchery deploy --redis` reads the file the same way)
    folder = tmp_path / "http"
    write_apis(folder, [{"name": f"bad-{uuid.uuid4().hex[:6]}", "queue": "no spaces"}])
    files = {path.name: path.read_bytes() for path in folder.iterdir()}
    answer = upload(client, tar_gz(files))
    assert answer.status_code == 400, answer.get_data(as_text=True)
    assert "queue 'no spaces' must be 1 to 64 letters" in answer.get_json()["message"]


def test_get_apis_and_each_job_spec_say_the_queue(pools, redis_server):
    listed = {api["name"]: api["queue"] for api in pools.client.get("/apis").get_json()["apis"]}
    assert listed[pools.apis["a"]] == pools.queues["a"]
    assert listed[f"gpu-{pools.tag}"] == "gpu"  # compute.gpu > 0 and no queue:
    assert listed[f"plain-{pools.tag}"] == pools.settings.queue  # the default queue
    for api, queue in ((f"gpu-{pools.tag}", "gpu"), (pools.apis["a"], pools.queues["a"])):
        body = {"workers": 1, "config": pools.config(redis_server.url), "item_list": {"items": [1], "batch_size": 1}}
        spec = pools.jobs.submit(api, body)
        assert spec["queue"] == queue
        assert spec["sqs_url"].partition("#")[0].endswith(f"/{queue}")
        pools.client.delete(f"/batch/{api}?jobID={spec['job_id']}")


# --- two pools ---------------------------------------------------------------------------------


def test_each_pool_runs_only_its_own_apis_batches_loading_each_predictor_once_per_process(two_pools, r, redis_server):
    pools, a, b = two_pools
    items = {"items": list(range(12)), "batch_size": 1}
    body = {"workers": 2, "config": pools.config(redis_server.url, sleep=0.2), "item_list": items}
    job_a = pools.jobs.submit(pools.apis["a"], body)["job_id"]
    job_b = pools.jobs.submit(pools.apis["b"], body)["job_id"]
    for api, job_id in ((pools.apis["a"], job_a), (pools.apis["b"], job_b)):
        ended = pools.jobs.wait_final(api, job_id)
        assert ended["status"] == status.SUCCEEDED, ended
        assert ended["batch_metrics"]["succeeded"] == 12
    # each job ran in its own pool's processes only, and each process loaded its predictor once
    assert set(pools.inits(r, job_a)) <= set(a.children()), (pools.inits(r, job_a), a.children())
    assert set(pools.inits(r, job_b)) <= set(b.children()), (pools.inits(r, job_b), b.children())
    for job_id in (job_a, job_b):
        pids = pools.inits(r, job_id)
        assert len(pids) == len(set(pids)), pids
    # the finalizers ran on their pools' control queues (BATCHERY_LANE=all serves them)
    complete = r.lrange(f"probe:{pools.tag}:complete", 0, -1)
    assert sorted(complete) == sorted([job_a, job_b])


def test_metrics_say_each_queues_demand_and_processes(two_pools, redis_server):
    pools, _, b = two_pools
    samples = parse(pools.client.get("/metrics").get_data(as_text=True))
    assert value(samples, "batchery_queue_processes", queue=pools.queues["a"]) == 2
    assert value(samples, "batchery_queue_processes", queue=pools.queues["b"]) == 2
    assert value(samples, "batchery_queue_processes", queue=pools.queues["idle"]) == 0
    assert value(samples, "batchery_queue_demand", queue=pools.queues["a"]) == 0
    # a job of 10 batches of 2 s with workers 3: 3 processes wanted, though the pool has 2
    config = pools.config(redis_server.url, sleep=2)
    body = {"workers": 3, "config": config, "item_list": {"items": list(range(10)), "batch_size": 1}}
    job_id = pools.jobs.submit(pools.apis["a"], body)["job_id"]
    samples = parse(pools.client.get("/metrics").get_data(as_text=True))
    assert value(samples, "batchery_queue_demand", queue=pools.queues["a"]) == 3
    assert value(samples, "batchery_queue_demand", queue=pools.queues["b"]) == 0
    labels = {"api": pools.apis["a"], "job_id": job_id, "queue": pools.queues["a"]}
    wait_for(
        lambda: pools.jobs.status(pools.apis["a"], job_id)["worker_counts"]["running"] == 2, what="two batches to run"
    )
    samples = parse(pools.client.get("/metrics").get_data(as_text=True))
    assert value(samples, "batchery_workers", state="running", **labels) == 2
    assert pools.client.delete(f"/batch/{pools.apis['a']}?jobID={job_id}").status_code == 200
    samples = parse(pools.client.get("/metrics").get_data(as_text=True))
    assert value(samples, "batchery_queue_demand", queue=pools.queues["a"]) == 0
    # a worker that stops says so: its queue has no process left at once, not when its entry expires
    b.stop()
    samples = parse(pools.client.get("/metrics").get_data(as_text=True))
    assert value(samples, "batchery_queue_processes", queue=pools.queues["b"]) == 0


def test_the_watchdog_recovers_a_lost_message_on_a_dedicated_queue(two_pools, redis_server, r):
    """The API process's own queue is another: it sweeps the pool's queue all the same, in its turn."""
    pools, a, _ = two_pools
    services, t0 = pools.services, now()
    api = services.registry.get(pools.apis["a"])
    queue = pools.queues["a"]
    spec = build_spec(api, {"workers": 2, "config": pools.config(redis_server.url)}, "", t0)
    spec.update(queue=queue, sqs_url=f"{services.submitter.queue_urls(queue)}#job={spec['job_id']}")
    releasing = JobStore(services.redis, services.settings.stalled_seconds)  # publishes nothing itself
    releasing.create(spec, api, t0)
    releasing.append(spec, ["0 [0]", "1 [1]"], t0)  # released, their messages lost
    releasing.enqueued(spec, t0)
    at = t0 + LOST + 1  # nothing on the queue delivered for LOST: messages that old were lost
    assert spec["job_id"] in Watchdog(services).sweep(at)
    ended = pools.jobs.wait_final(pools.apis["a"], spec["job_id"])
    assert ended["status"] == status.SUCCEEDED, ended
    assert set(pools.inits(r, spec["job_id"])) <= set(a.children())


def test_each_queue_takes_its_own_sweep_turn(pools):
    """A dedicated pool's queue, no API process's own, is swept in a turn of its own."""
    services = pools.services
    spec = pools.jobs.submit(pools.apis["idle"], {"workers": 1, "item_list": {"items": [1], "batch_size": 1}})
    try:
        first, second = Watchdog(services), Watchdog(services)
        assert {pools.queues["idle"], pools.settings.queue} <= first.sweep_in_turn(60)
        # every queue's turn, its own and the pool's, is taken (on this shared Redis, a queue of
        # another test's fleet may come free meanwhile: its turns are the session app's)
        assert not {pools.queues["idle"], pools.settings.queue} & second.sweep_in_turn(60)
        turns = [key.decode() for key in services.redis.keys("batchery:watchdog:*")]
        assert any(key.endswith(f"/{pools.queues['idle']}") for key in turns), turns
        assert any(key.endswith(f"/{pools.settings.queue}") for key in turns), turns
    finally:
        services.store.end(spec, status.STOPPED, "", now())
        for key in services.redis.keys("batchery:watchdog:*"):
            services.redis.delete(key)


# --- a queue no worker serves --------------------------------------------------------------------


def test_a_job_whose_queue_no_worker_serves_says_so_then_runs_when_one_starts(
    pools, worker_env, tmp_path, redis_server
):
    api = pools.apis["idle"]
    items = {"items": [1, 2, 3], "batch_size": 1}
    body = {"workers": 2, "config": pools.config(redis_server.url), "item_list": items}
    submitted = time.monotonic()
    job_id = pools.jobs.submit(api, body)["job_id"]

    def stalled():
        job = pools.jobs.status(api, job_id)
        return job if job["worker_counts"]["stalled"] == 2 else None

    job = wait_for(stalled, timeout=30, what="the batches to show stalled")
    took = time.monotonic() - submitted
    print(f"a job on a queue no worker serves showed stalled {took:.1f} s after its submission")
    assert took < pools.settings.stalled_seconds  # not BATCHERY_STALLED_SECONDS (600 s)
    assert job["worker_counts"]["pending"] == 0
    assert job["message"] == no_worker_message(pools.queues["idle"])
    queue = pools.queues["idle"]
    assert job["message"] == f'no worker serves the queue "{queue}": start one with BATCHERY_QUEUES={queue}'
    assert job["status"] == status.RUNNING
    worker = pools.worker(worker_env, tmp_path, "idle", concurrency=1)
    try:
        ended = pools.jobs.wait_final(api, job_id)
    finally:
        worker.stop()
    assert ended["status"] == status.SUCCEEDED, ended
    assert "message" not in ended


# --- SQS ---------------------------------------------------------------------------------------


@BOTH_BROKERS
def test_a_pools_batches_and_control_work_go_to_its_own_queues_on_either_broker(
    broker, settings, worker_env, tmp_path, redis_server, r
):
    pools = Pools(settings, tmp_path, uuid.uuid4().hex[:8])
    worker = pools.worker(worker_env, tmp_path, "a", concurrency=1)
    try:
        body = {"workers": 1, "config": pools.config(redis_server.url), "item_list": {"items": [1, 2], "batch_size": 1}}
        spec = pools.jobs.submit(pools.apis["a"], body)
        ended = pools.jobs.wait_final(pools.apis["a"], spec["job_id"])
    finally:
        worker.stop()
    assert ended["status"] == status.SUCCEEDED, ended
    assert r.lrange(f"probe:{pools.tag}:complete", 0, -1) == [spec["job_id"]]  # its control queue served
    queue = pools.queues["a"]
    if broker == "sqs":  # `{prefix}{name}`: the pool's queue and its control queue, made by kombu
        assert spec["sqs_url"].partition("#")[0].endswith(f"/{settings.sqs_queue_prefix}{queue}")
        names = {url.rsplit("/", 1)[-1] for url in boto3.client("sqs").list_queues()["QueueUrls"]}
        assert {f"{settings.sqs_queue_prefix}{queue}", f"{settings.sqs_queue_prefix}{queue}-control"} <= names

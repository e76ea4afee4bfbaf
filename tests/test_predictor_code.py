"""A predictor runs the code deployed with its API, in real worker processes: two APIs' modules of
the same name stay apart, and a redeploy does not change a running job's code."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import pytest

from app import create_app
from app.model import status
from tests.conftest import ROOT, Jobs
from tests.services import Worker, stop_process, wait_for

PREDICTOR = """
import json
import os
import time

import redis

import helpers


class PythonPredictor:
    def __init__(self, config):
        self.config = config
        self.redis = redis.Redis.from_url(config["redis_url"])

    def predict(self, payload, batch_id):
        seen = {"who": helpers.WHO, "pid": os.getpid(), "batch": batch_id}
        self.redis.rpush(self.config["key"], json.dumps(seen))
        time.sleep(self.config.get("sleep", 0))
"""


def api_folder(root: Path, name: str, who: str) -> Path:
    """A cortex.yaml declaring API `name`, whose predictor imports `helpers` (WHO = `who`)."""
    folder = root / name
    folder.mkdir()
    (folder / "predictor.py").write_text(PREDICTOR)
    (folder / "helpers.py").write_text(f"WHO = {who!r}\n")
    entry = {"name": name, "kind": "BatchAPI", "predictor": {"path": "predictor.py"}}
    (folder / "cortex.yaml").write_text(json.dumps([entry]))  # JSON is YAML
    return folder / "cortex.yaml"


class Fleet:
    """An API app and one-process workers on a queue of their own (the Redis broker)."""

    def __init__(self, settings, worker_env: dict, logdir: Path):
        queue = f"code-{uuid.uuid4().hex[:8]}"
        self.app = create_app({"SETTINGS": dataclasses.replace(settings, queue=queue)})
        self.registry = self.app.extensions["batchery"].registry
        self.jobs = Jobs(self.app.test_client())
        self.env, self.logdir, self.workers = {**worker_env, "BATCHERY_QUEUE": queue}, logdir, []

    def add_worker(self) -> Worker:
        self.workers.append(Worker(self.env, self.logdir, f"{self.env['BATCHERY_QUEUE']}-{len(self.workers)}", 1))
        return self.workers[-1]

    def stop(self) -> None:
        self.app.extensions["batchery_watchdog"].stop()
        for worker in self.workers:
            worker.stop()


@pytest.fixture
def fleet(settings, worker_env, tmp_path):
    fleet = Fleet(settings, worker_env, tmp_path)
    try:
        fleet.add_worker()
        yield fleet
    finally:
        fleet.stop()


def seen(r, key: str) -> list[dict]:
    return [json.loads(entry) for entry in r.lrange(key, 0, -1)]


def run(jobs: Jobs, api: str, config: dict, n: int, workers: int = 1) -> str:
    body = {"workers": workers, "item_list": {"items": list(range(n)), "batch_size": 1}, "config": config}
    return jobs.submit(api, body)["job_id"]


def test_two_apis_with_a_helpers_module_each_get_their_own_in_one_process(fleet, tmp_path, r, redis_server):
    """One pool process ran both APIs' batches with the helpers module it imported first."""
    jobs, registry = fleet.jobs, fleet.registry
    tag = uuid.uuid4().hex[:8]
    for who in ("a", "b"):
        registry.deploy_file(api_folder(tmp_path, f"twin-{who}-{tag}", who))
    for _ in range(2):  # in turn, in the one process: each API's modules in and out of it
        for who in ("a", "b"):
            config = {"redis_url": redis_server.url, "key": f"seen:{tag}:{who}"}
            job_id = run(jobs, f"twin-{who}-{tag}", config, 3)
            assert jobs.wait_final(f"twin-{who}-{tag}", job_id)["status"] == status.SUCCEEDED
    for who in ("a", "b"):
        assert [entry["who"] for entry in seen(r, f"seen:{tag}:{who}")] == [who] * 6
    assert len({entry["pid"] for who in ("a", "b") for entry in seen(r, f"seen:{tag}:{who}")}) == 1


def test_a_redeploy_does_not_change_the_code_a_running_job_runs_in_a_fresh_process(fleet, tmp_path, r, redis_server):
    """The helper edited and the API redeployed while a job runs, then a new worker process takes
    the job's next batches: they run the job's code (they ran the new files); a new job runs the new."""
    jobs, registry = fleet.jobs, fleet.registry
    tag = uuid.uuid4().hex[:8]
    api = f"redeployed-{tag}"
    cortex_yaml = api_folder(tmp_path, api, "v1")
    registry.deploy_file(cortex_yaml)
    config = {"redis_url": redis_server.url, "key": f"seen:{tag}:old", "sleep": 0.3}
    job_id = run(jobs, api, config, 12)
    wait_for(lambda: r.llen(config["key"]) >= 1, timeout=60, what="the job's first batch")

    (cortex_yaml.parent / "helpers.py").write_text("WHO = 'v2'\n")
    registry.deploy_file(cortex_yaml)
    first, second = fleet.workers[0], fleet.add_worker()
    # a warm shutdown, as `docker stop` asks it (SIGTERM to the main process only): its batch ends,
    # the rest go to the new worker's process
    stop_process(first.process)
    assert jobs.wait_final(api, job_id)["status"] == status.SUCCEEDED

    old = seen(r, config["key"])
    assert len(old) == 12 and {entry["who"] for entry in old} == {"v1"}
    assert second.children()[0] in {entry["pid"] for entry in old}  # a fresh process ran some of them
    new_job = run(jobs, api, dict(config, key=f"seen:{tag}:new", sleep=0), 2)
    assert jobs.wait_final(api, new_job)["status"] == status.SUCCEEDED
    assert {entry["who"] for entry in seen(r, f"seen:{tag}:new")} == {"v2"}


def test_apis_of_one_project_keep_one_copy_of_its_code(redis_server, r):
    """The code is kept by its content: the examples' two APIs (one project) stored it twice, and
    every redeploy of an API once more."""
    from app.store.registry import Registry

    registry = Registry(redis_server.client)
    first = {spec["name"]: spec for spec in registry.deploy_file(ROOT / "examples" / "cortex.yaml")}
    again = registry.deploy_file(ROOT / "examples" / "cortex.yaml")
    code_ids = {spec["code_id"] for spec in [*first.values(), *again]}
    assert len(code_ids) == 1
    (code_id,) = code_ids
    assert set(registry.code(code_id)) == {"sum/predictor.py", "text/predictor.py"}
    assert first["sum"]["api_id"] != first["text-stats"]["api_id"]

"""The control lane (issue 21.2): finalizers and S3 enqueuers go to the job's control queue, which a
worker process reserved for them serves (BATCHERY_LANE=control), so that they never wait behind
batches while every pool process is busy on another job's long batches."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

import boto3
import pytest
import redis
import yaml

from app import create_app
from app.model import status
from app.store.joblog import attach_job_log
from tests.conftest import Jobs
from tests.services import Worker, wait_for

LONG_SECONDS = 10  # each of the long job's batches
PREDICTOR = """\
import json
import time

import redis


class PythonPredictor:
    def __init__(self, config, job_spec):
        self.redis = redis.Redis.from_url(config["redis_url"])
        self.key = f"lane:{config['tag']}:events"
        self.job_id = job_spec["job_id"]

    def _event(self, event, batch_id=None):
        line = {"job": self.job_id, "batch": batch_id, "event": event, "t": time.time()}
        self.redis.rpush(self.key, json.dumps(line))

    def predict(self, payload, batch_id):
        self._event("start", batch_id)
        for item in payload:
            if isinstance(item, dict):
                time.sleep(item.get("sleep", 0))
        self._event("end", batch_id)

    def on_job_complete(self):
        self._event("complete")
"""


@pytest.fixture(autouse=True)
def job_logs_back_to_the_shared_app(flask_app):
    """The app built here takes the process's job log handler; give it back to the shared app."""
    yield
    attach_job_log(flask_app.extensions["batchery"].job_log)


class Lane:
    """An API app on a queue of its own, a pool of 2 processes serving it, and its control lane."""

    def __init__(self, settings, worker_env, tmp_path):
        self.tag = uuid.uuid4().hex[:8]
        self.api = f"lane-{self.tag}"
        folder = tmp_path / "lane"
        folder.mkdir()
        (folder / "lane.py").write_text(PREDICTOR)
        entry = {"name": self.api, "kind": "BatchAPI", "predictor": {"type": "python", "path": "lane.py"}}
        (folder / "cortex.yaml").write_text(yaml.safe_dump([entry]))
        queue = f"lane-{self.tag}"
        own = dataclasses.replace(settings, queue=queue, apis_file=str(folder / "cortex.yaml"), watchdog_seconds=0)
        self.app = create_app({"SETTINGS": own})
        self.jobs = Jobs(self.app.test_client())
        self.redis = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        self.config = {"redis_url": settings.redis_url, "tag": self.tag}
        env = {**worker_env, "BATCHERY_QUEUE": queue}
        self.workers = [Worker(env, tmp_path, f"pool-{self.tag}", concurrency=2)]
        self.workers.append(Worker({**env, "BATCHERY_LANE": "control"}, tmp_path, f"control-{self.tag}", 1))

    def events(self, job_id: str, event: str) -> list[dict]:
        lines = [json.loads(line) for line in self.redis.lrange(f"lane:{self.tag}:events", 0, -1)]
        return [line for line in lines if line["job"] == job_id and line["event"] == event]

    def busy_with_long_batches(self) -> str:
        """A job whose 10 s batches keep both pool processes busy; returns it once both run."""
        items = [{"sleep": LONG_SECONDS}] * 6
        job_id = self.jobs.submit(self.api, self.body(items, workers=2))["job_id"]
        wait_for(lambda: len(self.events(job_id, "start")) == 2, timeout=30, what="both pool processes busy")
        return job_id

    def body(self, items: list, workers: int = 1) -> dict:
        return {"workers": workers, "config": self.config, "item_list": {"items": items, "batch_size": 1}}

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


@pytest.fixture(scope="module")
def lane(settings, worker_env, tmp_path_factory):
    fleet = Lane(settings, worker_env, tmp_path_factory.mktemp("lane"))
    yield fleet
    fleet.stop()


def test_on_job_complete_does_not_wait_behind_another_jobs_long_batches(lane):
    # the small job's batch runs first (1 s), while the long job takes the other process; then the
    # long job's next batch takes the freed process: both busy for 10 s when the finalizer is published
    small = lane.jobs.submit(lane.api, lane.body([{"sleep": 1}]))["job_id"]
    long = lane.jobs.submit(lane.api, lane.body([{"sleep": LONG_SECONDS}] * 6, workers=2))["job_id"]
    try:
        assert lane.jobs.wait_final(lane.api, small, timeout=60)["status"] == status.SUCCEEDED
        complete = wait_for(lambda: lane.events(small, "complete"), timeout=30, what="on_job_complete")[0]["t"]
        (batch_end,) = (event["t"] for event in lane.events(small, "end"))
        # the small job's process took the long job's next batch as its own ended: both processes
        # ran long batches from then on, the first of which ended 10 s later
        running = wait_for(lambda: len(lane.events(long, "start")) >= 2, timeout=30, what="both long batches")
        assert running
        ends = wait_for(lambda: lane.events(long, "end"), timeout=LONG_SECONDS * 3, what="a long batch to end")
        first_end = min(event["t"] for event in ends)
        print(
            f"on_job_complete began {complete - batch_end:.2f} s after the small job's last batch ended; "
            f"the first of the long batches running beside it ended {first_end - batch_end:.2f} s after it"
        )
        # on the job's queue, the finalizer would have waited behind the long job's released batch
        assert complete < first_end, (complete, ends)
    finally:
        lane.jobs.client.delete(f"/batch/{lane.api}?jobID={long}")


def test_an_s3_job_starts_enqueuing_while_every_pool_process_is_busy(lane, moto):
    bucket = f"lane-{lane.tag}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    for n in range(3):
        s3.put_object(Bucket=bucket, Key=f"in/{n}.json", Body=b"{}")
    long = lane.busy_with_long_batches()
    try:
        submitted = time.time()
        lister = {"s3_paths": [f"s3://{bucket}/in/"], "batch_size": 1}
        job_id = lane.jobs.submit(lane.api, {"workers": 1, "config": lane.config, "file_path_lister": lister})["job_id"]

        def enqueued() -> float | None:
            job = lane.jobs.status(lane.api, job_id)
            return time.time() if job["status"] != status.ENQUEUING and job["total_batch_count"] == 3 else None

        done = wait_for(enqueued, timeout=LONG_SECONDS * 3, interval=0.05, what="the S3 job to be enqueued")
        print(f"the S3 job was enqueued {done - submitted:.2f} s after its submission, every pool process busy")
        ends = lane.events(long, "end")
        assert not ends or done < min(event["t"] for event in ends), (done, ends)  # before any long batch ended
    finally:
        lane.jobs.client.delete(f"/batch/{lane.api}?jobID={long}")
        lane.jobs.client.delete(f"/batch/{lane.api}?jobID={job_id}")

"""Fixtures: a real redis-server, real Celery workers, and the Flask app wired to them."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import boto3
import pytest
import redis

from app import create_app
from app.config import Settings
from app.model import status
from tests.services import ROOT, MotoServer, RedisServer, Worker, served, wait_for

PREDICTORS = Path(__file__).parent / "predictors"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that ran on a worker shows the end of that worker's log: on CI, the only
    account of what the worker was doing when a job did not end."""
    outcome = yield
    report = outcome.get_result()
    worker = getattr(item, "funcargs", {}).get("worker")
    if report.failed and isinstance(worker, Worker) and worker.log_path.exists():
        lines = worker.output().splitlines()[-WORKER_LOG_LINES:]
        report.sections.append((f"worker log (last {WORKER_LOG_LINES} lines)", "\n".join(lines)))


WORKER_LOG_LINES = 150


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    """A moto server for S3; this process and the workers reach it through the standard variables."""
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    saved = {name: os.environ.get(name) for name in server.env()}
    os.environ.update(server.env())
    yield server
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    server.stop()


@pytest.fixture(scope="session")
def queue_name() -> str:
    return f"batchery-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def broker(request) -> str:
    """The broker the tests run on: `redis`, or `sqs` where a module parametrizes it (both, then)."""
    return getattr(request, "param", "redis")


# Tests that run on both brokers: `pytestmark = BOTH_BROKERS` in their module.
BOTH_BROKERS = pytest.mark.parametrize("broker", ["redis", "sqs"], indirect=True)

SQS_VISIBILITY_TIMEOUT = 10  # short, so that a test shows a long batch is kept invisible


@pytest.fixture(scope="session")
def settings(broker, redis_server, queue_name, moto) -> Settings:
    common = {"redis_url": redis_server.url, "apis_file": str(PREDICTORS / "cortex.yaml"), "queue": queue_name}
    if broker == "sqs":
        return Settings(
            broker_url="sqs://", sqs_queue_prefix="test-", sqs_visibility_timeout=SQS_VISIBILITY_TIMEOUT, **common
        )
    return Settings(**common)


@pytest.fixture(scope="session")
def project_cache(tmp_path_factory) -> Path:
    """Where the test workers unpack deployed projects (BATCHERY_PROJECT_CACHE): one per session."""
    return tmp_path_factory.mktemp("project-cache")


@pytest.fixture(scope="session")
def worker_env(broker, settings, moto, project_cache) -> dict:
    env = dict(os.environ)
    env.update(
        REDIS_URL=settings.redis_url,
        BATCHERY_QUEUE=settings.queue,
        PYTHONPATH=str(ROOT),
        BATCHERY_ENQUEUE_LEASE="4",
        BATCHERY_PROJECT_CACHE=str(project_cache),
        **moto.env(),
    )
    env.pop("BROKER_URL", None)
    if broker == "sqs":
        env.update(
            BROKER_URL="sqs://",
            BATCHERY_SQS_QUEUE_PREFIX=settings.sqs_queue_prefix,
            BATCHERY_SQS_VISIBILITY_TIMEOUT=str(settings.sqs_visibility_timeout),
        )
    return env


@pytest.fixture(scope="session")
def worker(broker, worker_env, tmp_path_factory):
    """A worker with 4 pool processes on the broker under test, shared by the tests. It serves the
    `gpu` queue too: the tests' APIs with compute.gpu > 0 run their jobs there (app/model/queues.py)."""
    env = dict(worker_env, BATCHERY_QUEUES=f"{worker_env['BATCHERY_QUEUE']},gpu")
    process = Worker(env, tmp_path_factory.mktemp("logs"), f"shared-{broker}", concurrency=4)
    yield process
    process.stop()


@pytest.fixture
def dead_letter_queue(broker, moto):
    """Make a dead-letter queue and return its ARN (on SQS a real queue; on Redis any name works)."""

    def make(name: str) -> str:
        if broker == "sqs":
            boto3.client("sqs").create_queue(QueueName=name)
        return f"arn:aws:sqs:us-east-1:123456789012:{name}"

    return make


@pytest.fixture(scope="session")
def flask_app(settings):
    app = create_app({"SETTINGS": settings})
    yield app
    app.extensions["batchery_watchdog"].stop()  # not left sweeping beside the other broker's app


@pytest.fixture(scope="session")
def live_url(flask_app) -> str:
    """The API served over real HTTP on a free port (werkzeug, threaded): for clients outside this process."""
    with served(flask_app) as url:
        yield url


@pytest.fixture
def client(flask_app):
    return flask_app.test_client()


@pytest.fixture
def r(redis_server) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url, decode_responses=True)


@pytest.fixture
def probe_config(redis_server) -> dict:
    """Config for the `probe` test predictor: where it records what it saw, under a fresh prefix."""
    return {"redis_url": redis_server.url, "tag": uuid.uuid4().hex[:8]}


class Jobs:
    """Submit jobs and wait for them through the HTTP API."""

    def __init__(self, client):
        self.client = client

    def submit(self, api: str, body: dict) -> dict:
        response = self.client.post(f"/batch/{api}", data=json.dumps(body))
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    def status(self, api: str, job_id: str) -> dict:
        response = self.client.get(f"/batch/{api}?jobID={job_id}")
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()["job_status"]

    def wait_final(self, api: str, job_id: str, timeout: float = 120) -> dict:
        """The job's status once final; failing, the last status seen says where it stuck."""
        seen = {}

        def final():
            seen["last"] = self.status(api, job_id)
            return seen["last"] if status.is_final(seen["last"]["status"]) else None

        try:
            return wait_for(final, timeout=timeout, interval=0.1, what=f"job {job_id} to end")
        except AssertionError as err:
            raise AssertionError(f"{err}; its last status: {json.dumps(seen.get('last'))}") from None


@pytest.fixture
def jobs(client) -> Jobs:
    return Jobs(client)


@pytest.fixture
def unconsumed(redis_server, probe_config):
    """The services of an app whose queue no worker consumes, its watchdog swept by hand."""
    queue = f"nobody-consumes-{probe_config['tag']}"
    settings = Settings(
        redis_url=redis_server.url, apis_file=str(PREDICTORS / "cortex.yaml"), queue=queue, watchdog_seconds=0
    )
    return create_app({"SETTINGS": settings}).extensions["batchery"]

"""Hostile messages and leaked credentials: a pickled task is refused unread; no status, log or error shows a secret."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import pickle
import subprocess
import sys
import time
import uuid

import pytest

from app import create_app
from app.broker.config import RUN_BATCH, make_celery
from app.config import Settings, redacted
from app.model import status
from app.store.joblog import JsonFormatter, TextFormatter
from tests.conftest import PREDICTORS
from tests.services import ROOT, RedisServer, TlsProxy, Worker, wait_for


class TouchOnLoad:
    """Unpickled, this creates `path`: what an attacker's pickle would do (with worse than touch)."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path(self.path).touch, ())


def log_after(path: pathlib.Path, offset: int) -> str:
    with path.open(errors="replace") as log:
        log.seek(offset)
        return log.read()


def test_the_payload_is_live_when_unpickled(tmp_path):
    # The test below means something only if loading this payload does run code.
    marker = tmp_path / "loaded"
    pickle.loads(pickle.dumps(TouchOnLoad(marker)))
    assert marker.exists()


def test_a_pickled_task_message_is_refused_and_never_loaded(settings, worker, tmp_path):
    """On the Redis broker (the suite's default): the worker's `accept_content=["json"]` refuses it."""
    marker = tmp_path / f"pwned-{uuid.uuid4().hex[:8]}"
    publisher = make_celery(settings)
    publisher.conf.accept_content = ["json", "pickle"]  # the attacker's publisher only
    offset = worker.log_path.stat().st_size
    publisher.send_task(
        RUN_BATCH,
        args=("job-pickle", "0", TouchOnLoad(marker)),
        queue=settings.queue,
        serializer="pickle",
    )
    deadline = time.monotonic() + 30
    refused = ""
    while time.monotonic() < deadline:
        text = log_after(worker.log_path, offset)
        if "Refusing to deserialize untrusted content" in text:
            refused = text
            break
        time.sleep(0.1)
    assert refused, f"the worker did not refuse the pickled message:\n{log_after(worker.log_path, offset)}"
    assert "of type pickle (application/x-python-serialize)" in refused
    assert "discarded" in refused  # dropped, not requeued for ever
    time.sleep(0.5)  # a load would have run by now
    assert not marker.exists()
    assert worker.process.poll() is None  # the worker lives on
    publisher.close()


# --- credentials ------------------------------------------------------------------------------

PASSWORD = "s3cret-pass"


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("locked-redis"), password=PASSWORD)
    assert PASSWORD in server.url
    yield server
    server.stop()


@pytest.fixture(scope="module")
def locked_settings(locked_redis) -> Settings:
    return Settings(
        redis_url=locked_redis.url,
        apis_file=str(PREDICTORS / "cortex.yaml"),
        queue=f"batchery-locked-{uuid.uuid4().hex[:8]}",
        watchdog_seconds=0,
    )


@pytest.fixture(scope="module")
def locked_worker(locked_settings, worker_env, tmp_path_factory):
    env = dict(worker_env, REDIS_URL=locked_settings.redis_url, BATCHERY_QUEUE=locked_settings.queue)
    env.pop("BROKER_URL", None)
    process = Worker(env, tmp_path_factory.mktemp("locked-logs"), "locked", concurrency=2)
    yield process
    process.stop()


def without_password(text: str, where: str) -> str:
    assert PASSWORD not in text, f"the Redis password shows in {where}:\n{text}"
    return text


def test_no_status_log_or_answer_shows_the_redis_password(locked_settings, locked_worker, probe_config):
    app = create_app({"SETTINGS": locked_settings})
    http = app.test_client()
    body = {"workers": 2, "item_list": {"items": [1, 2, 3], "batch_size": 1}, "config": probe_config}
    submitted = http.post("/batch/probe", data=json.dumps(body))
    assert submitted.status_code == 200, submitted.get_data(as_text=True)
    job_id = submitted.get_json()["job_id"]
    without_password(submitted.get_data(as_text=True), "the submitted job's spec")

    def final():
        answer = http.get(f"/batch/probe?jobID={job_id}")
        return answer if status.is_final(answer.get_json()["job_status"]["status"]) else None

    answer = wait_for(final, timeout=60, interval=0.1, what=f"job {job_id} to end")
    assert answer.get_json()["job_status"]["status"] == "status_succeeded", answer.get_json()
    without_password(answer.get_data(as_text=True), "the job's status")
    for path in ("/batch/probe", "/batch", f"/batch/probe/logs?jobID={job_id}", "/metrics", "/healthz"):
        response = http.get(path)
        assert response.status_code == 200, (path, response.status_code)
        without_password(response.get_data(as_text=True), path)
    logs = http.get(f"/batch/probe/logs?jobID={job_id}").get_json()["lines"]
    assert logs  # the job did log: the check above read something
    worker_log = without_password(locked_worker.output(), "the worker's log")
    assert "redis://:**@" in worker_log  # Celery's banner shows where it connects, password masked


def test_a_wrong_password_makes_a_503_that_does_not_show_it(locked_redis):
    wrong = "wrong-pass-42"
    url = locked_redis.url.replace(PASSWORD, wrong)
    app = create_app({"SETTINGS": Settings(redis_url=url, apis_file="", watchdog_seconds=0)})
    health = app.test_client().get("/healthz")
    assert health.status_code == 503
    text = health.get_data(as_text=True)
    assert wrong not in text and PASSWORD not in text
    assert health.get_json()["redis"].startswith("error:")
    answer = app.test_client().get("/batch")
    assert answer.status_code == 503 and wrong not in answer.get_data(as_text=True)


def test_the_cli_deploy_error_does_not_show_the_password(locked_redis):
    wrong = "wrong-pass-42"
    env = dict(os.environ, REDIS_URL=locked_redis.url.replace(PASSWORD, wrong))
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "deploy", str(PREDICTORS / "cortex.yaml"), "--redis"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "cannot reach the job store" in done.stderr
    assert wrong not in done.stderr + done.stdout


def test_log_lines_mask_url_credentials():
    record = logging.LogRecord(
        "x", logging.WARNING, __file__, 1, "cannot reach %s", (f"redis://:{PASSWORD}@h:1/0",), None
    )
    for formatter in (JsonFormatter(), TextFormatter("%(message)s")):
        line = formatter.format(record)
        assert PASSWORD not in line and "redis://***@h:1/0" in line, line
    assert redacted(f"sqs://KEY:{PASSWORD}@127.0.0.1:9 and redis://u:{PASSWORD}@h") == (
        "sqs://***@127.0.0.1:9 and redis://***@h"
    )


# --- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_settings(locked_redis, tmp_path_factory):
    proxy = TlsProxy(tmp_path_factory.mktemp("tls"), locked_redis.port)
    query = f"ssl_cert_reqs=required&ssl_ca_certs={proxy.ca_file}"
    yield Settings(
        redis_url=f"rediss://:{PASSWORD}@127.0.0.1:{proxy.port}/0?{query}",
        apis_file=str(PREDICTORS / "cortex.yaml"),
        queue=f"batchery-tls-{uuid.uuid4().hex[:8]}",
        watchdog_seconds=0,
    )
    proxy.stop()


def test_a_job_runs_over_rediss_with_a_password(tls_settings, worker_env, tmp_path, probe_config):
    """The job store, the broker and the result backend all through TLS (redis-py's `rediss://`)."""
    env = dict(worker_env, REDIS_URL=tls_settings.redis_url, BATCHERY_QUEUE=tls_settings.queue)
    env.pop("BROKER_URL", None)
    worker = Worker(env, tmp_path, "tls", concurrency=1)
    try:
        http = create_app({"SETTINGS": tls_settings}).test_client()
        # /healthz gives each probe 1 s: the first one's TLS handshakes can take longer on a busy
        # machine (a CI run saw it), so it is asked until it answers ok, over TLS, both probes
        healthy = {"status": "ok", "redis": "ok", "broker": "ok"}
        wait_for(lambda: http.get("/healthz").get_json() == healthy, timeout=30, interval=0.2, what="/healthz ok")
        body = {"workers": 1, "item_list": {"items": [1, 2], "batch_size": 1}, "config": probe_config}
        submitted = http.post("/batch/probe", data=json.dumps(body))
        assert submitted.status_code == 200, submitted.get_data(as_text=True)
        job_id = submitted.get_json()["job_id"]

        def final():
            job = http.get(f"/batch/probe?jobID={job_id}").get_json()["job_status"]
            return job if status.is_final(job["status"]) else None

        job = wait_for(final, timeout=60, interval=0.1, what=f"job {job_id} to end")
        assert job["status"] == "status_succeeded", job
        without_password(json.dumps(job), "the job's status")
    finally:
        worker.stop()
    worker_log = without_password(worker.output(), "the TLS worker's log")
    assert "rediss://:**@127.0.0.1" in worker_log  # the worker's broker connection was the TLS one


# --- predictor code ---------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["predictor", "predictor_file", "path"])
def test_a_request_cannot_name_predictor_code(client, tmp_path, field):
    """Predictors load only from deployed cortex.yaml files: a job naming a file is refused, unread."""
    marker = tmp_path / "imported"
    evil = tmp_path / "evil.py"
    evil.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass PythonPredictor: pass\n")
    value = {"type": "python", "path": str(evil)} if field == "predictor" else str(evil)
    body = {"workers": 1, "item_list": {"items": [1], "batch_size": 1}, field: value}
    response = client.post("/batch/probe?dryRun=true", data=json.dumps(body))
    assert response.status_code == 400, response.get_data(as_text=True)
    assert field in response.get_json()["message"]
    assert not marker.exists()

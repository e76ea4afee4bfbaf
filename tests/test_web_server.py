"""The API under gunicorn as the Procfile runs it (threads): a request may take longer than
gunicorn's worker timeout, which is a heartbeat, not a limit on a request."""

from __future__ import annotations

import time

import boto3
import pytest
import requests

from tests.conftest import PREDICTORS
from tests.services import Gunicorn, SlowS3

LIST_DELAY = 2.0  # seconds a listing page takes through the proxy
TIMEOUT = 3  # gunicorn's --timeout here: a sync worker busy this long is killed


@pytest.fixture
def slow_s3(moto):
    proxy = SlowS3(moto.port, LIST_DELAY)
    yield proxy
    proxy.stop()


@pytest.fixture
def api(worker_env, slow_s3, tmp_path):
    env = dict(
        worker_env,
        BATCHERY_APIS=str(PREDICTORS / "cortex.yaml"),
        AWS_ENDPOINT_URL_S3=slow_s3.url,
        GUNICORN_CMD_ARGS=f"--timeout {TIMEOUT}",
    )
    server = Gunicorn(env, tmp_path)
    yield server
    server.stop()


def test_a_dry_run_listing_longer_than_the_worker_timeout_answers_in_full(api, moto):
    """A sync worker was killed mid-answer: a 200 cut off without `validations passed`, or a 500."""
    bucket = "slow-listing"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    keys = [f"images/{n}.jpg" for n in range(4)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    body = {"workers": 1, "file_path_lister": {"s3_paths": [f"s3://{bucket}/{key}" for key in keys], "batch_size": 1}}
    # each path is listed on its own: 4 pages of 2 s, 8 s in all, over twice the timeout
    started = time.monotonic()
    response = requests.post(f"{api.url}/batch/probe", params={"dryRun": "true"}, json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.text == "".join(f"s3://{bucket}/{key}\n" for key in keys) + "validations passed"
    assert time.monotonic() - started > 2 * TIMEOUT  # the answer (streamed) outlasted the timeout
    assert api.process.poll() is None

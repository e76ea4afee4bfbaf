"""Predictions collected: a job with `output` has `predict`'s return values written as NDJSON, one
file per batch on S3 (`<s3_path><job_id>/<batch_id>.ndjson`) or kept in the job store, on real
workers and a real moto S3; `GET /batch/<api>/<job_id>/output` lists the files or streams the lines."""

from __future__ import annotations

import json
import math
import uuid

import boto3
import pytest

from app.jobs.output import OutputError, OutputStore, S3Destination, ndjson_lines
from app.model import status
from app.store import keys
from app.web import responses
from tests.conftest import PREDICTORS
from tests.services import wait_for


@pytest.fixture(scope="module", autouse=True)
def echo_api(flask_app):
    """The `echo` test API (tests/predictors/echo.yaml), deployed for this module's tests."""
    flask_app.extensions["batchery"].registry.deploy_file(PREDICTORS / "echo.yaml")


@pytest.fixture
def bucket(moto) -> str:
    """A new, empty S3 bucket on the moto server."""
    name = f"out-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def read_file(bucket: str, key: str) -> list[dict]:
    body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    assert body.endswith("\n")
    return [json.loads(line) for line in body.splitlines()]


def keys_under(bucket: str, prefix: str) -> list[str]:
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def log_messages(client, job_id: str) -> list[str]:
    return [line["message"] for line in client.get(f"/batch/echo/logs?jobID={job_id}").get_json()["lines"]]


def submit(client, body: dict):
    return client.post("/batch/echo", data=json.dumps(body))


@pytest.mark.parametrize("broker", ["redis", "sqs"], indirect=True)
def test_an_item_list_job_writes_one_file_per_batch_with_a_line_per_item(jobs, worker, client, bucket, probe_config):
    body = {
        "workers": 2,
        "config": probe_config,
        "item_list": {"items": ["a", "b", "c", "d", "e"], "batch_size": 2},
        "output": {"s3_path": f"s3://{bucket}/preds"},  # no trailing slash: a folder all the same
    }
    spec = jobs.submit("echo", body)
    assert spec["output"] == {"s3_path": f"s3://{bucket}/preds"}
    job = jobs.wait_final("echo", spec["job_id"])
    assert job["status"] == status.SUCCEEDED and job["output"] == spec["output"]

    job_id = spec["job_id"]
    assert keys_under(bucket, "") == [f"preds/{job_id}/{n}.ndjson" for n in range(3)]
    assert read_file(bucket, f"preds/{job_id}/0.ndjson") == [
        {"batch_id": "0", "index": 0, "prediction": {"item": "a", "delivery": 1}},
        {"batch_id": "0", "index": 1, "prediction": {"item": "b", "delivery": 1}},
    ]
    assert read_file(bucket, f"preds/{job_id}/2.ndjson") == [
        {"batch_id": "2", "index": 0, "prediction": {"item": "e", "delivery": 1}}
    ]

    answer = client.get(f"/batch/echo/{job_id}/output")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    listed = responses.OutputFilesResponseSchema().load(answer.get_json())  # as documented
    assert [(f["path"], f["batch_id"]) for f in listed["files"]] == [
        (f"s3://{bucket}/preds/{job_id}/{n}.ndjson", str(n)) for n in range(3)
    ]
    assert listed["next"] is None and listed["status"] == status.SUCCEEDED
    after = client.get(f"/batch/echo/{job_id}/output?after=0").get_json()
    assert [f["batch_id"] for f in after["files"]] == ["1", "2"]


def test_a_retried_batch_writes_its_last_attempt_once_and_a_batch_failed_for_good_writes_none(
    jobs, worker, client, bucket, probe_config
):
    body = {
        "workers": 3,
        "config": probe_config,
        "item_list": {"items": [1, {"fail": 1}, {"fail": "always"}], "batch_size": 1},
        "sqs_dead_letter_queue": {
            "arn": f"arn:aws:sqs:us-east-1:123456789012:out-{uuid.uuid4().hex[:6]}",
            "max_receive_count": 2,
        },
        "output": {"s3_path": f"s3://{bucket}/"},
    }
    spec = jobs.submit("echo", body)
    job = jobs.wait_final("echo", spec["job_id"])
    assert job["status"] == status.COMPLETED_WITH_FAILURES
    assert (job["batch_metrics"]["succeeded"], job["batch_metrics"]["failed"]) == (2, 3)

    job_id = spec["job_id"]
    assert keys_under(bucket, job_id) == [f"{job_id}/0.ndjson", f"{job_id}/1.ndjson"]  # none for batch 2
    # batch 1 failed on its first delivery (which wrote nothing) and succeeded on its second
    assert read_file(bucket, f"{job_id}/1.ndjson") == [
        {"batch_id": "1", "index": 0, "prediction": {"item": {"fail": 1}, "delivery": 2}}
    ]
    messages = log_messages(client, job_id)
    written = [m for m in messages if m.startswith("batch 1: succeeded in") and "output: 1 lines" in m]
    assert len(written) == 1, messages

    # a retry of the job writes where the job did, under its own id (its batch 2 fails again: no file)
    child = client.post(f"/batch/echo/{job_id}/retry", data="{}").get_json()
    assert child["output"] == body["output"]
    assert jobs.wait_final("echo", child["job_id"])["status"] == status.COMPLETED_WITH_FAILURES
    assert keys_under(bucket, child["job_id"]) == []


def test_a_return_value_json_cannot_hold_fails_the_attempt_and_writes_nothing(
    jobs, worker, client, bucket, probe_config
):
    body = {
        "workers": 1,
        "config": dict(probe_config, shape="not_json"),
        "item_list": {"items": [1], "batch_size": 1},
        "output": {"s3_path": f"s3://{bucket}/x/"},
    }
    spec = jobs.submit("echo", body)
    assert jobs.wait_final("echo", spec["job_id"])["status"] == status.COMPLETED_WITH_FAILURES
    assert keys_under(bucket, "") == []
    messages = "\n".join(log_messages(client, spec["job_id"]))
    assert "batch 0: its output was not written: predict's return value is not JSON" in messages, messages


def test_an_output_bucket_the_workers_cannot_write_to_fails_the_batch_with_the_s3_error_in_the_log(
    jobs, worker, client, r, bucket, probe_config
):
    """The bucket exists at submission (checked), and is gone when the batch writes."""
    body = {
        "workers": 1,
        "config": probe_config,
        "item_list": {"items": [{"hold": True}], "batch_size": 1},
        "output": {"s3_path": f"s3://{bucket}/preds/"},
    }
    spec = jobs.submit("echo", body)
    tag = probe_config["tag"]
    wait_for(lambda: r.exists(f"echo:{tag}:holding:{spec['job_id']}"), what="the batch to run")
    boto3.client("s3").delete_bucket(Bucket=bucket)
    r.set(f"echo:{tag}:release", 1)
    job = jobs.wait_final("echo", spec["job_id"])
    assert job["status"] == status.COMPLETED_WITH_FAILURES
    messages = "\n".join(log_messages(client, spec["job_id"]))
    expected = (
        f"batch 0: its output was not written: cannot write s3://{bucket}/preds/{spec['job_id']}/0.ndjson: NoSuchBucket"
    )
    assert expected in messages, messages
    answer = client.get(f"/batch/echo/{spec['job_id']}/output")
    assert answer.status_code == 400 and f"bucket {bucket} does not exist" in answer.get_json()["message"]


def test_the_redis_store_keeps_the_lines_and_the_route_streams_them_in_batch_order(jobs, worker, client, probe_config):
    items = list(range(23))
    body = {
        "workers": 3,
        "config": dict(probe_config, shape="count"),
        "item_list": {"items": items, "batch_size": 2},
        "output": {"store": "redis"},
    }
    spec = jobs.submit("echo", body)
    assert jobs.wait_final("echo", spec["job_id"])["status"] == status.SUCCEEDED
    answer = client.get(f"/batch/echo/{spec['job_id']}/output")
    assert answer.status_code == 200 and answer.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in answer.get_data(as_text=True).splitlines()]
    # a value that is not a list of one entry per item is one line per batch, without an index
    assert lines == [{"batch_id": str(n), "prediction": {"count": 2 if n < 11 else 1}} for n in range(12)]


def test_the_store_refuses_a_batch_over_the_jobs_cap_and_counts_an_overwrite_once(r):
    store = OutputStore(r, cap_bytes=100)
    job_id = f"capped-{uuid.uuid4().hex[:6]}"
    store.put(job_id, "0", b"x" * 60)
    store.put(job_id, "0", b"y" * 70)  # a later attempt of the same batch replaces the first
    assert store.stored_bytes(job_id) == 70
    with pytest.raises(OutputError, match="over its cap of 100 "):
        store.put(job_id, "1", b"z" * 31)
    store.put(job_id, "1", b"z" * 30)
    assert list(store.lines(job_id)) == [b"y" * 70, b"z" * 30]
    r.delete(keys.job_output(job_id), keys.job_output_bytes(job_id))


def test_the_lines_say_the_batch_and_the_index_and_refuse_what_json_cannot_hold():
    assert ndjson_lines("7", [1, 2], ["a", None]) == (
        b'{"batch_id":"7","index":0,"prediction":"a"}\n{"batch_id":"7","index":1,"prediction":null}\n'
    )
    # a list of another length than the batch is a value of the batch, as any other
    assert ndjson_lines("7", [1, 2], [1]) == b'{"batch_id":"7","prediction":[1]}\n'
    assert ndjson_lines("7", [1], None) == b'{"batch_id":"7","prediction":null}\n'
    for bad in ([math.nan], [object()]):
        with pytest.raises(OutputError, match="predict's return value is not JSON"):
            ndjson_lines("7", [1], bad)
    assert S3Destination.of("s3://b/p").key("j", "3") == "p/j/3.ndjson"
    assert S3Destination.of("s3://b").key("j", "3") == "j/3.ndjson"


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ({}, "output: give exactly one of s3_path or store"),
        ({"s3_path": "s3://b-x/p/", "store": "redis"}, "output: give exactly one of s3_path or store"),
        ({"s3_path": "/local/path"}, "output.s3_path: must be s3://<bucket>/<prefix>/"),
        ({"s3_path": "s3://Bad_Bucket/p/"}, "output.s3_path: must be s3://<bucket>/<prefix>/"),
        ({"store": "memcached"}, "output.store: must be redis"),
        ({"s3_path": "s3://no-such-bucket-here/p/"}, "output.s3_path: bucket no-such-bucket-here does not exist"),
        ("s3://b/p/", "output: invalid input type"),
    ],
)
def test_a_bad_output_is_a_400_saying_what_to_write(client, moto, output, message):
    response = submit(client, {"workers": 1, "item_list": {"items": [1], "batch_size": 1}, "output": output})
    assert response.status_code == 400
    assert response.get_json()["message"].startswith(message), response.get_json()


def test_a_job_without_output_has_output_null_and_its_output_route_is_a_404(jobs, client, probe_config):
    spec = jobs.submit("echo", {"workers": 1, "config": probe_config, "item_list": {"items": [1], "batch_size": 1}})
    assert spec["output"] is None and jobs.status("echo", spec["job_id"])["output"] is None
    answer = client.get(f"/batch/echo/{spec['job_id']}/output")
    assert answer.status_code == 404 and "has no output" in answer.get_json()["message"]
    assert client.get("/batch/echo/no-such-job/output").status_code == 404
    assert client.get("/batch/echo/a.b/output").status_code == 400
    assert client.get(f"/batch/echo/{spec['job_id']}/output?page=2").status_code == 400

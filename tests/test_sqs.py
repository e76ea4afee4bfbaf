"""What only the SQS broker has: real dead-letter queues checked at submission, visibility kept."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import boto3
import pytest

from app.model import status
from tests.conftest import SQS_VISIBILITY_TIMEOUT

pytestmark = pytest.mark.parametrize("broker", ["sqs"], indirect=True)


def dlq(arn: str, count: int) -> dict:
    return {"arn": arn, "max_receive_count": count}


def test_a_dead_letter_arn_naming_no_sqs_queue_is_a_400_at_submission(client):
    body = {
        "workers": 1,
        "item_list": {"items": [1], "batch_size": 1},
        "sqs_dead_letter_queue": dlq("arn:aws:sqs:us-east-1:123456789012:no-such-queue", 2),
    }
    response = client.post("/batch/minimal", data=json.dumps(body))
    assert response.status_code == 400
    message = response.get_json()["message"]
    assert message.startswith("sqs_dead_letter_queue.arn: queue no-such-queue does not exist")
    not_an_arn = dict(body, sqs_dead_letter_queue=dlq("failed", 2))
    assert "is not an SQS queue ARN" in client.post("/batch/minimal", data=json.dumps(not_an_arn)).get_json()["message"]


def test_a_batch_longer_than_the_visibility_timeout_is_delivered_once(jobs, worker, r, probe_config):
    long = SQS_VISIBILITY_TIMEOUT * 2.5
    spec = jobs.submit(
        "probe", {"workers": 1, "config": probe_config, "item_list": {"items": [{"sleep": long}], "batch_size": 1}}
    )
    job = jobs.wait_final("probe", spec["job_id"], timeout=120)
    assert job["status"] == status.SUCCEEDED
    assert r.hget(f"probe:{probe_config['tag']}:deliveries:{spec['job_id']}", "0") == "1"
    assert job["batch_metrics"]["failed"] == 0


@contextlib.contextmanager
def queue_limited_to_256_kib(settings) -> Iterator[None]:
    """The shared queue as made when SQS's limit was 256 KiB (the default then), for the block."""
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName=f"{settings.sqs_queue_prefix}{settings.queue}")["QueueUrl"]  # or its URL
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"MaximumMessageSize": "262144"})
    try:
        yield
    finally:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"MaximumMessageSize": "1048576"})


def test_a_batch_too_large_for_the_sqs_queue_is_a_400_saying_what_to_change(flask_app, client, settings):
    """A 150 KB batch, legal, makes a message over a 256 KiB queue's limit. The answer was a 503
    broker_unavailable, which reads as an outage."""
    with queue_limited_to_256_kib(settings):
        body = {"workers": 1, "item_list": {"items": ["x" * 150_000], "batch_size": 1}}
        response = client.post("/batch/minimal", data=json.dumps(body))
    assert response.status_code == 400, response.get_data(as_text=True)
    message = response.get_json()["message"]
    assert "over the SQS queue's MaximumMessageSize" in message and "raise it, or use a smaller batch_size" in message
    job_id = message.split()[1]
    job = client.get(f"/batch/minimal?jobID={job_id}").get_json()["job_status"]
    assert job["status"] == status.ENQUEUE_FAILED
    assert "MaximumMessageSize" in job["message"]


def test_a_later_batch_too_large_for_the_sqs_queue_fails_for_good_and_the_job_ends(
    jobs, worker, settings, probe_config
):
    """Released by a worker, not at submission: published again by the watchdog for ever, the job
    showed running and never ended."""
    big = "x" * 150_000
    body = {"workers": 1, "config": probe_config, "item_list": {"items": [1, big, 3], "batch_size": 1}}
    with queue_limited_to_256_kib(settings):
        spec = jobs.submit("probe", body)  # only batch 0 is published at submission (workers 1)
        job = jobs.wait_final("probe", spec["job_id"], timeout=120)
    assert job["status"] == status.COMPLETED_WITH_FAILURES
    assert (job["batch_metrics"]["succeeded"], job["batch_metrics"]["failed"]) == (2, 0)  # it never ran
    lines = jobs.client.get(f"/batch/probe/logs?jobID={spec['job_id']}").get_json()["lines"]
    assert any(
        line["message"].startswith("batch 1: failed for good without running: a batch's message is over the SQS")
        for line in lines
    ), lines


def test_a_dead_letter_queue_deleted_mid_job_does_not_hang_the_job(client, jobs, worker, probe_config):
    """The dead letter's send raised, the outcome went unrecorded, and the job never ended. It is
    recorded all the same, the job log saying why the letter is missing, and the batch is kept for
    a retry job."""
    sqs = boto3.client("sqs")
    name = f"deleted-dlq-{probe_config['tag']}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    items = [1, {"fail": "always", "sleep": 1}]
    body = {"workers": 2, "config": probe_config, "item_list": {"items": items, "batch_size": 1}}
    body["sqs_dead_letter_queue"] = dlq(f"arn:aws:sqs:us-east-1:123456789012:{name}", 1)
    spec = jobs.submit("probe", body)
    sqs.delete_queue(QueueUrl=url)  # while the failing batch sleeps in predict
    job = jobs.wait_final("probe", spec["job_id"])
    assert job["status"] == status.COMPLETED_WITH_FAILURES, job
    assert (job["batch_metrics"]["succeeded"], job["batches_in_queue"]) == (1, 0)
    lines = client.get(f"/batch/probe/logs?jobID={spec['job_id']}").get_json()["lines"]
    assert any("batch 1: its dead letter could not be sent" in line["message"] for line in lines)
    sqs.create_queue(QueueName=f"{name}-2")  # the retry needs a dead-letter queue that exists
    again = {"sqs_dead_letter_queue": dlq(f"arn:aws:sqs:us-east-1:123456789012:{name}-2", 1)}
    retry = client.post(f"/batch/probe/{spec['job_id']}/retry", json=again)
    assert retry.status_code == 200, retry.get_json()
    retried = jobs.wait_final("probe", retry.get_json()["job_id"])
    assert retried["total_batch_count"] == 1  # the failed batch, kept

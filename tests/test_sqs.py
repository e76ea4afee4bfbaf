"""What only the SQS broker has: real dead-letter queues checked at submission, visibility kept."""

from __future__ import annotations

import json

import pytest

from app import status
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

"""`sqs_dead_letter_queue.arn` is checked as an SQS queue's ARN on the Redis broker too: an ARN that
works locally works on SQS, and one that would fail there is a 400 saying what is wrong."""

from __future__ import annotations

import json

import pytest

from app.broker.dead_letters import parse_sqs_arn


def dry_run(client, arn: str):
    dlq = {"arn": arn, "max_receive_count": 2}
    body = {"workers": 1, "item_list": {"items": [1, 2], "batch_size": 1}, "sqs_dead_letter_queue": dlq}
    return client.post("/batch/minimal?dryRun=true", data=json.dumps(body))


@pytest.mark.parametrize(
    ("arn", "says"),
    [
        ("foo", "'foo' is not an SQS queue ARN (arn:aws:sqs:<region>:<12-digit account>:<queue name>)"),
        ("arn:aws:s3:::my-bucket", "is not an SQS queue ARN"),
        ("arn:aws:sqs:us-east-1:123456789012", "is not an SQS queue ARN"),
        ("arn:azure:sqs:us-east-1:123456789012:dlq", "must be one of aws, aws-cn, aws-us-gov, not 'azure'"),
        ("arn:aws:sqs:nowhere:123456789012:dlq", "'nowhere' is not an AWS region (e.g. us-east-1)"),
        ("arn:aws:sqs:us-east-1:1234:dlq", "the account must be 12 digits, not '1234'"),
        ("arn:aws:sqs:us-east-1:123456789012:", "'' is not an SQS queue name"),
        ("arn:aws:sqs:us-east-1:123456789012:dead letters", "'dead letters' is not an SQS queue name"),
        ("arn:aws:sqs:us-east-1:123456789012:" + "q" * 81, "is not an SQS queue name (1 to 80 letters"),
    ],
    ids=["a-plain-name", "not-sqs", "no-name", "partition", "region", "account", "empty-name", "space", "too-long"],
)
def test_an_arn_sqs_would_refuse_is_a_400_saying_what_is_wrong_on_the_redis_broker(client, arn, says):
    response = dry_run(client, arn)
    assert response.status_code == 400, response.get_data(as_text=True)
    answer = response.get_json()
    assert answer["kind"] == "invalid_request"
    assert answer["message"].startswith("sqs_dead_letter_queue.arn: ")
    assert says in answer["message"]


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:sqs:us-east-1:123456789012:failed-batches",
        "arn:aws-cn:sqs:cn-north-1:123456789012:dlq_1",
        "arn:aws-us-gov:sqs:us-gov-west-1:123456789012:dlq.fifo",
    ],
)
def test_sqs_arns_of_every_partition_are_taken(client, arn):
    response = dry_run(client, arn)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert parse_sqs_arn(arn).account == "123456789012"

"""Dead-letter queues: where batches that failed for good go, named by the job's
`sqs_dead_letter_queue.arn`.

On the Redis broker the queue is the Redis list `batchery:dlq:<name>` (the ARN's last part); on
the SQS broker it is the real SQS queue the ARN names. Either way each message is JSON with the
batch's payload, job_id, batch_id and the last error, so it can be replayed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import botocore.exceptions
import redis

from app.broker.sqs import sqs_client
from app.store import keys


def queue_name(arn: str) -> str:
    """The queue name at the end of an ARN (`arn:aws:sqs:region:account:name`), or a plain name."""
    return arn.rsplit(":", 1)[-1]


# An SQS queue's ARN: `arn:<partition>:sqs:<region>:<12-digit account>:<queue name>`; a queue name
# is 1 to 80 letters, digits, `-` and `_`, with `.fifo` at the end of a FIFO queue's.
SQS_ARN_FORM = "arn:aws:sqs:<region>:<12-digit account>:<queue name>"
PARTITIONS = ("aws", "aws-cn", "aws-us-gov")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")
_ACCOUNT = re.compile(r"\d{12}")
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]{1,75}(\.fifo)?|[A-Za-z0-9_-]{1,80}")


@dataclass(frozen=True)
class SqsArn:
    """The parts of an SQS queue's ARN."""

    partition: str
    region: str
    account: str
    name: str


def parse_sqs_arn(arn: str) -> SqsArn:
    """The parts of an SQS queue's ARN. Raises ValueError saying what is wrong with it: the same
    check on both brokers, so that an ARN that works locally on Redis works on SQS too."""
    parts = arn.split(":")
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "sqs":
        raise ValueError(f"{arn!r} is not an SQS queue ARN ({SQS_ARN_FORM})")
    _, partition, _, region, account, name = parts
    if partition not in PARTITIONS:
        raise ValueError(f"{arn!r}: the partition must be one of {', '.join(PARTITIONS)}, not {partition!r}")
    if not _REGION.fullmatch(region):
        raise ValueError(f"{arn!r}: {region!r} is not an AWS region (e.g. us-east-1)")
    if not _ACCOUNT.fullmatch(account):
        raise ValueError(f"{arn!r}: the account must be 12 digits, not {account!r}")
    if not _QUEUE_NAME.fullmatch(name):
        rule = "1 to 80 letters, digits, - and _; a FIFO queue's ends in .fifo"
        raise ValueError(f"{arn!r}: {name!r} is not an SQS queue name ({rule})")
    return SqsArn(partition, region, account, name)


class RedisDeadLetters:
    """Dead-letter queues as Redis lists."""

    def __init__(self, client: redis.Redis):
        self.redis = client

    def check(self, arn: str) -> None:
        """Raise ValueError unless `arn` is an SQS queue's ARN, as on the SQS broker (the list,
        named by its queue name, is created by the first message)."""
        parse_sqs_arn(arn)

    def send(self, arn: str, record: dict) -> None:
        """Append a record to the queue."""
        self.redis.rpush(keys.dead_letters(queue_name(arn)), json.dumps(record))

    def read(self, arn: str, limit: int = 1000) -> list[dict]:
        """The first `limit` records of a queue, oldest first."""
        return [json.loads(r) for r in self.redis.lrange(keys.dead_letters(queue_name(arn)), 0, limit - 1)]


class SqsDeadLetters:
    """Dead-letter queues as the SQS queues their ARNs name (boto3's usual settings and credentials)."""

    def __init__(self) -> None:
        self._urls: dict[str, str] = {}

    @cached_property
    def sqs(self) -> Any:
        """This process's SQS client for dead letters."""
        return sqs_client()

    def check(self, arn: str) -> None:
        """Raise ValueError if the ARN names no SQS queue this process can use."""
        self.url(arn)

    def url(self, arn: str) -> str:
        """The queue URL of an ARN; raises ValueError."""
        if arn not in self._urls:
            parsed = parse_sqs_arn(arn)
            try:
                reply = self.sqs.get_queue_url(QueueName=parsed.name, QueueOwnerAWSAccountId=parsed.account)
            except botocore.exceptions.ClientError as err:
                code = err.response.get("Error", {}).get("Code", "error")
                raise ValueError(f"queue {parsed.name} does not exist or cannot be used ({code})") from None
            except botocore.exceptions.BotoCoreError as err:
                raise ValueError(f"cannot reach SQS to check queue {parsed.name}: {err}") from None
            self._urls[arn] = reply["QueueUrl"]
        return self._urls[arn]

    def send(self, arn: str, record: dict) -> None:
        """Send a record to the queue (a FIFO queue gets the batch as its deduplication id)."""
        url = self.url(arn)
        extra: dict[str, str] = {}
        if url.endswith(".fifo"):
            dedup = f"{record['job_id']}-{record['batch_id']}"
            extra = {"MessageGroupId": record["job_id"], "MessageDeduplicationId": dedup}
        self.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(record), **extra)

    def read(self, arn: str, limit: int = 10) -> list[dict]:
        """Receive (without deleting) up to `limit` records; for tests and operators."""
        reply = self.sqs.receive_message(QueueUrl=self.url(arn), MaxNumberOfMessages=min(limit, 10), WaitTimeSeconds=1)
        return [json.loads(m["Body"]) for m in reply.get("Messages", [])]

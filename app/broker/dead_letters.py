"""Dead-letter queues: where batches that failed for good go, named by the job's
`sqs_dead_letter_queue.arn`.

On the Redis broker the queue is the Redis list `batchery:dlq:<name>` (the ARN's last part); on
the SQS broker it is the real SQS queue the ARN names. Either way each message is JSON with the
batch's payload, job_id, batch_id and the last error, so it can be replayed.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

import botocore.exceptions
import redis

from app.broker.sqs import sqs_client
from app.store import keys


def queue_name(arn: str) -> str:
    """The queue name at the end of an ARN (`arn:aws:sqs:region:account:name`), or a plain name."""
    return arn.rsplit(":", 1)[-1]


class RedisDeadLetters:
    """Dead-letter queues as Redis lists."""

    def __init__(self, client: redis.Redis):
        self.redis = client

    def check(self, arn: str) -> None:
        """Any name will do: the list is created by the first message."""
        if not queue_name(arn):
            raise ValueError(f"{arn!r} names no queue")

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
            parts = arn.split(":")
            if len(parts) != 6 or parts[:3] != ["arn", "aws", "sqs"] or not parts[5]:
                raise ValueError(f"{arn!r} is not an SQS queue ARN (arn:aws:sqs:<region>:<account>:<name>)")
            try:
                reply = self.sqs.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])
            except botocore.exceptions.ClientError as err:
                code = err.response.get("Error", {}).get("Code", "error")
                raise ValueError(f"queue {parts[5]} does not exist or cannot be used ({code})") from None
            except botocore.exceptions.BotoCoreError as err:
                raise ValueError(f"cannot reach SQS to check queue {parts[5]}: {err}") from None
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

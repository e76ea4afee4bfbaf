"""The broker's queue as the API sees it: whether the broker answers, and how many messages wait.

Both use short timeouts: they serve `/healthz` and `/metrics`, which must answer fast.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import botocore.config
import redis

from app.broker.config import is_sqs
from app.broker.sqs import sqs_client
from app.config import Settings
from app.store.connection import store_client

TIMEOUT_SECONDS = 2
QUICK = botocore.config.Config(
    connect_timeout=TIMEOUT_SECONDS, read_timeout=TIMEOUT_SECONDS, retries={"max_attempts": 1}
)


class BrokerQueue:
    """The broker's queues as the API reads them: `settings.queue` unless told another, on the
    Redis broker or on SQS (`<prefix><queue>`)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    @property
    def sqs_name(self) -> str:
        """The default queue's name on SQS: kombu prefixes it (BATCHERY_SQS_QUEUE_PREFIX)."""
        return f"{self.settings.sqs_queue_prefix}{self.settings.queue}"

    @property
    def name(self) -> str:
        """The default queue's name on its broker, as an operator finds it there."""
        return self.name_of(self.settings.queue)

    def name_of(self, queue: str) -> str:
        """A queue's name on its broker (with the prefix on SQS)."""
        return f"{self.settings.sqs_queue_prefix}{queue}" if is_sqs(self.settings) else queue

    @cached_property
    def redis(self) -> redis.Redis:
        """A client of the Redis broker that answers or fails fast."""
        return store_client(
            self.settings.broker, self.settings, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS
        )

    @cached_property
    def sqs(self) -> Any:
        """An SQS client that answers or fails fast."""
        return sqs_client(self.settings.sqs_region, QUICK)

    def ping(self) -> None:
        """Raise the client's error unless the broker answers (on SQS: with these credentials)."""
        if is_sqs(self.settings):
            self.sqs.list_queues(QueueNamePrefix=self.sqs_name, MaxResults=1)
        else:
            self.redis.ping()

    def depth(self, queue: str | None = None) -> int:
        """Messages waiting in `queue` (default: `settings.queue`; on SQS approximate, not counting
        those being worked on). Raises the broker client's error if it does not answer."""
        queue = queue or self.settings.queue
        if not is_sqs(self.settings):
            # kombu's Redis transport keeps a queue's messages (priority 0) in the list named after it
            return int(self.redis.llen(queue))
        try:
            url = self.sqs.get_queue_url(QueueName=self.name_of(queue))["QueueUrl"]
        except self.sqs.exceptions.QueueDoesNotExist:
            return 0  # kombu creates it on first use
        reply = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        return int(reply["Attributes"]["ApproximateNumberOfMessages"])

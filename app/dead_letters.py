"""Dead-letter queues on the Redis broker: a Redis list per queue name, replayable."""

from __future__ import annotations

import json

import redis

from app import keys


class DeadLetters:
    """Batches that failed for good, with what is needed to replay them."""

    def __init__(self, client: redis.Redis):
        self.redis = client

    def send(self, queue_name: str, record: dict) -> None:
        """Append a record (job_id, api_name, batch_id, payload, error, ...) to the queue."""
        self.redis.rpush(keys.dead_letters(queue_name), json.dumps(record))

    def read(self, queue_name: str, limit: int = 1000) -> list[dict]:
        """The first `limit` records of a queue, oldest first."""
        return [json.loads(r) for r in self.redis.lrange(keys.dead_letters(queue_name), 0, limit - 1)]

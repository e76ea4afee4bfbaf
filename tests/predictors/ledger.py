"""A test predictor for retries: it records every batch it sees in Redis, under `ledger:<tag>:...`,
as `[batch_id, payload]` in the job's `seen` list. A batch fails if an item is a string holding
"fail" (an S3 path too), unless config["heal"] is set. An item string holding "hold" waits, inside
predict, until the key `ledger:<tag>:release` exists. `on_job_complete(self, job)` stores the job
it is given, as JSON, at `ledger:<tag>:complete:<job_id>`.
"""

import json
import time

import redis

HOLD_SECONDS = 120  # a test that forgets to release its batches does not keep a worker for ever


class PythonPredictor:
    def __init__(self, config, job_spec):
        self.config = config
        self.job_id = job_spec["job_id"]
        self.redis = redis.Redis.from_url(config["redis_url"])
        self.key = f"ledger:{config['tag']}"
        self.redis.set(f"{self.key}:job_spec:{self.job_id}", json.dumps(job_spec))

    def predict(self, payload, batch_id):
        self.redis.rpush(f"{self.key}:seen:{self.job_id}", json.dumps([batch_id, payload]))
        texts = [item for item in payload if isinstance(item, str)]
        if any("hold" in item for item in texts):
            deadline = time.monotonic() + HOLD_SECONDS
            while not self.redis.exists(f"{self.key}:release") and time.monotonic() < deadline:
                time.sleep(0.05)
        if not self.config.get("heal") and any("fail" in item for item in texts):
            raise ValueError(f"ledger: batch {batch_id} holds a failing item")

    def on_job_complete(self, job):
        self.redis.set(f"{self.key}:complete:{self.job_id}", json.dumps(job))

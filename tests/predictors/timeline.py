"""A test predictor for a fleet of worker hosts: it records in Redis, under `timeline:<tag>:...`,
each batch's start (list `started`, at the start of `predict`) and its whole run (list `runs`, at
its end), as JSON {"job", "batch", "host", "pid", "start", "end"}: `host` is the Celery hostname
of the worker running it (`--hostname`), times are epoch seconds. Each predictor's creation goes
to `inits` ({"job", "host", "pid", "t"}) and each on_job_complete to `complete`. config["sleep"]:
seconds each batch sleeps; config["hold"]: each batch first waits, inside predict, until the key
`timeline:<tag>:release` exists (so that a test knows a batch is running when it acts).
"""

import json
import os
import time

import redis
from celery import current_task

HOLD_SECONDS = 120  # a test that forgets to release its batches does not keep a worker for ever


def host() -> str:
    """The Celery hostname of the worker this process belongs to."""
    return current_task.request.hostname or "?"


class PythonPredictor:
    def __init__(self, config, job_spec):
        self.config = config
        self.job_id = job_spec["job_id"]
        self.redis = redis.Redis.from_url(config["redis_url"])
        self.key = f"timeline:{config['tag']}"
        init = {"job": self.job_id, "host": host(), "pid": os.getpid(), "t": time.time()}
        self.redis.rpush(f"{self.key}:inits", json.dumps(init))

    def predict(self, payload, batch_id):
        run = {"job": self.job_id, "batch": batch_id, "host": host(), "pid": os.getpid(), "start": time.time()}
        self.redis.rpush(f"{self.key}:started", json.dumps(run))
        if self.config.get("hold"):
            deadline = time.monotonic() + HOLD_SECONDS
            while not self.redis.exists(f"{self.key}:release") and time.monotonic() < deadline:
                time.sleep(0.02)
        time.sleep(float(self.config.get("sleep", 0)))
        run["end"] = time.time()
        self.redis.rpush(f"{self.key}:runs", json.dumps(run))

    def on_job_complete(self):
        self.redis.rpush(f"{self.key}:complete", self.job_id)

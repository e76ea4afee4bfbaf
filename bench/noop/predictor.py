"""A no-op predictor for the benchmarks: `predict` does nothing (unless the job's config asks it to
sleep or record times), and `on_job_complete` counts itself in Redis, so the bench can check it ran
exactly once per job.

Redis keys (on the worker's REDIS_URL): `bench:complete:<job_id>` (a counter),
`bench:starts:<job_id>` and `bench:ends:<job_id>` (lists of `"<batch_id> <unix time>"`, when
`record` is set). With `echo` set, `predict` returns its payload (bench/output.py: a job's
predictions written out, or ignored without `output`).
"""

import os
import time

import redis


class PythonPredictor:
    def __init__(self, config, job_spec):
        self.job_id = job_spec["job_id"]
        self.sleep = float(config.get("sleep", 0))
        self.record = bool(config.get("record", False))
        self.echo = bool(config.get("echo", False))
        self.redis = redis.Redis.from_url(config.get("redis_url") or os.environ["REDIS_URL"])

    def predict(self, payload, batch_id):
        if self.record:
            self.redis.rpush(f"bench:starts:{self.job_id}", f"{batch_id} {time.time()!r}")
        if self.sleep:
            time.sleep(self.sleep)
        if self.record:
            self.redis.rpush(f"bench:ends:{self.job_id}", f"{batch_id} {time.time()!r}")
        return payload if self.echo else None

    def on_job_complete(self):
        self.redis.incr(f"bench:complete:{self.job_id}")

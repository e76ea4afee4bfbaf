"""A predictor whose creation is slow, like a model load: bench/pools.py counts how often each worker
process creates one. `__init__` sleeps `config["init_seconds"]` (default 1) and adds 1 to the field
`<api name> <pid>` of the Redis hash `bench:pools:inits:<config["tag"]>`; `predict` sleeps
`config["sleep"]` seconds (default 0.02); `on_job_complete` counts itself in `bench:pools:complete:<tag>`.
"""

import os
import time

import redis


class PythonPredictor:
    def __init__(self, config, job_spec):
        self.sleep = float(config.get("sleep", 0.02))
        self.tag = config["tag"]
        self.redis = redis.Redis.from_url(config.get("redis_url") or os.environ["REDIS_URL"])
        time.sleep(float(config.get("init_seconds", 1.0)))  # the model load
        self.redis.hincrby(f"bench:pools:inits:{self.tag}", f"{job_spec['api_name']} {os.getpid()}", 1)

    def predict(self, payload, batch_id):
        time.sleep(self.sleep)

    def on_job_complete(self):
        self.redis.incr(f"bench:pools:complete:{self.tag}")

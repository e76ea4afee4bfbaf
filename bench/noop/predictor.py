"""A no-op predictor for the benchmarks: `predict` does nothing (unless the job's config asks it to
sleep or record times), and `on_job_complete` counts itself in Redis, so the bench can check it ran
exactly once per job.

Redis keys (on the worker's REDIS_URL): `bench:complete:<job_id>` (a counter),
`bench:starts:<job_id>` and `bench:ends:<job_id>` (lists of `"<batch_id> <unix time>"`, when
`record` is set). With `echo` set, `predict` returns its payload (bench/output.py: a job's
predictions written out, or ignored without `output`). With `count_inits` set (a tag), each
predictor made counts itself in `bench:inits:<tag>` (a hash: pid -> count); with `hold_mib`, it
holds that much memory, every page touched, as a model would (bench/predictor_cache.py).
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
        if config.get("count_inits"):
            self.redis.hincrby(f"bench:inits:{config['count_inits']}", str(os.getpid()), 1)
        self.model = self._held(int(config.get("hold_mib", 0)) << 20)

    @staticmethod
    def _held(size):
        held = bytearray(size)
        for offset in range(0, size, 4096):  # touched: untouched pages take no memory
            held[offset] = 1
        return held

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

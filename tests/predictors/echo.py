"""A test predictor whose return value is its output: by default one entry per item,
`{"item": <item>, "delivery": <this batch's delivery number>}`; config["shape"] "count" returns
`{"count": <items>}` instead, "not_json" a value JSON cannot hold. Items steer it: {"fail": N} makes
its batch raise on the first N deliveries ("always": every time); {"hold": true} waits, inside
predict, until the key `echo:<tag>:release` exists. It counts deliveries in Redis under `echo:<tag>`.
"""

import time

import redis

HOLD_SECONDS = 120  # a test that forgets to release its batches does not keep a worker for ever


class PythonPredictor:
    def __init__(self, config, job_spec):
        self.config = config
        self.job_id = job_spec["job_id"]
        self.redis = redis.Redis.from_url(config["redis_url"])
        self.key = f"echo:{config['tag']}"

    def predict(self, payload, batch_id):
        delivery = self.redis.hincrby(f"{self.key}:deliveries:{self.job_id}", batch_id, 1)
        for item in payload:
            if not isinstance(item, dict):
                continue
            if item.get("hold"):
                deadline = time.monotonic() + HOLD_SECONDS
                self.redis.set(f"{self.key}:holding:{self.job_id}", batch_id)
                while not self.redis.exists(f"{self.key}:release") and time.monotonic() < deadline:
                    time.sleep(0.05)
            fail = item.get("fail")
            if fail == "always" or (isinstance(fail, int) and delivery <= fail):
                raise ValueError(f"echo: batch {batch_id} fails on delivery {delivery}")
        shape = self.config.get("shape", "items")
        if shape == "count":
            return {"count": len(payload)}
        if shape == "not_json":
            return [{1, 2}] * len(payload)
        return [{"item": item, "delivery": delivery} for item in payload]

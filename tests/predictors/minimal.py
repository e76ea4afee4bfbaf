"""A predictor with the shortest Cortex signatures: no job_spec, no batch_id, no on_job_complete."""

import json

import redis


class PythonPredictor:
    def __init__(self, config):
        self.redis = redis.Redis.from_url(config["redis_url"])
        self.tag = config["tag"]

    def predict(self, payload):
        self.redis.rpush(f"minimal:{self.tag}:payloads", json.dumps(payload))

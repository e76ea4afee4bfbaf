"""A job's throughput over its life: batches ended per second, against time.

RECORD (app/store/lua/record.lua) adds each batch that ends to a 10-s bucket of a hash kept with the
job (keys.throughput): one command in the call that counts the batch anyway, so a job of a million
batches costs the same per batch as one of ten. The hash has one field per 10 s the job ran; the
read merges neighbouring buckets so that an answer has at most MAX_POINTS points.
"""

from __future__ import annotations

import math

import redis

from app.store import keys

BUCKET_SECONDS = 10
MAX_POINTS = 360


def read_buckets(client: redis.Redis, job_id: str) -> dict[int, int]:
    """The job's buckets: first second of the bucket -> batches that ended in it."""
    raw = client.hgetall(keys.throughput(job_id))
    return {int(second): int(count) for second, count in raw.items()}


def series(buckets: dict[int, int], max_points: int = MAX_POINTS) -> dict:
    """`{"bucket_seconds", "points": [{"time", "batches_per_second"}]}` from the buckets, gaps filled
    with 0, neighbouring buckets merged so that there are at most `max_points` points."""
    if not buckets:
        return {"bucket_seconds": BUCKET_SECONDS, "points": []}
    first, last = min(buckets), max(buckets)
    slots = (last - first) // BUCKET_SECONDS + 1
    merge = max(1, math.ceil(slots / max_points))
    width = BUCKET_SECONDS * merge
    points = []
    for start in range(first, last + 1, width):
        ended = sum(buckets.get(second, 0) for second in range(start, start + width, BUCKET_SECONDS))
        points.append({"time": start, "batches_per_second": round(ended / width, 3)})
    return {"bucket_seconds": width, "points": points}

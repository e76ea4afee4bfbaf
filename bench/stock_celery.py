"""A stock Celery app for bench/stack_load.py's baseline: Celery's own defaults, nothing of Batchery's.

    STOCK_REDIS_URL=redis://... celery -A bench.stock_celery worker --concurrency 2
    STOCK_REDIS_URL=redis://... celery -A bench.stock_celery flower --port 5555

Redis is its broker and its result backend (a chord needs one). `stock.batch` takes a batch's
items and does nothing with them, as bench/noop's predictor; `stock.done` is the chord's body.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

URL = os.environ.get("STOCK_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("stock", broker=URL, backend=URL)


@app.task(name="stock.batch")
def batch(items: list) -> None:
    """A chord header task: one batch of items, nothing done with them."""


@app.task(name="stock.done")
def done(results: list, tag: str) -> None:
    """The chord's body: records when it ran and how many header results it received."""
    redis.Redis.from_url(URL).hset(f"bench:chord:{tag}", mapping={"time": repr(time.time()), "results": len(results)})

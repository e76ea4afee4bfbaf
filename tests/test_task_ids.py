"""A batch's Celery task id, as Flower and `celery control` show it, names its job, its batch and
which of the batch's messages it is: `<job_id>.b<batch_id>.a<n>` (it counted the job's releases)."""

from __future__ import annotations

import json

import pytest
import redis

from app.broker.config import make_celery
from app.broker.dispatch import Dispatcher
from app.config import Settings
from app.model.job import build_spec
from app.model.wire import batch_task_id
from app.store.job_store import JobStore
from tests.services import RedisServer

QUEUE = "task-ids"
API = {"name": "api", "api_id": "x", "predictor": {"path": "p.py", "config": {}}}


@pytest.fixture
def server(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def queued(server: RedisServer) -> list[dict]:
    """The messages on the queue, oldest first."""
    return [json.loads(raw) for raw in reversed(server.client.lrange(QUEUE, 0, -1))]


def test_the_id_names_the_job_the_batch_and_the_message():
    assert batch_task_id("69b1c2", "4") == "69b1c2.b4.a1"
    assert batch_task_id("69b1c2", "4", generation=2) == "69b1c2.b4.a3"


def test_the_messages_the_store_pushes_are_named_after_their_batches(server):
    store = JobStore(redis.Redis.from_url(server.url), broker_queue=QUEUE)
    spec = build_spec(API, {"workers": 3, "config": {}}, "redis://h/q", 1000.0)
    store.create(spec, API, 1000.0)
    store.append(spec, [f"{i} [{i}]" for i in range(5)], 1000.0)  # batches 0, 1, 2 released
    store.record(spec, "1", "ok", 0.1, "p", 1001.0)  # releases batch 3: the 4th release, batch 3's id
    ids = [message["headers"]["id"] for message in queued(server)]
    assert ids == [f"{spec['job_id']}.b{i}.a1" for i in (0, 1, 2, 3)]
    assert [message["properties"]["delivery_tag"] for message in queued(server)] == ids


def test_the_messages_send_task_publishes_are_named_the_same_way(server):
    dispatcher = Dispatcher(make_celery(Settings(redis_url=server.url, queue=QUEUE)))
    dispatcher.publish_batches("job", ["3 [3]"])
    dispatcher.republish_batches("job", [(1, "3 [3]"), (2, "7 [7]")])  # published again by the watchdog
    assert [message["headers"]["id"] for message in queued(server)] == ["job.b3.a1", "job.b3.a2", "job.b7.a3"]

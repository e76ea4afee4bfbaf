"""Batch messages pushed to the Redis broker by the store's release itself (`batch_message`, app/store/lua/common.lua).

A real worker consuming them is covered by every job test on the Redis broker; these compare the
message, field by field, with the one Celery's own `send_task` writes for the same batch, so a
Celery or kombu upgrade that changes the message is caught here, by name.
"""

from __future__ import annotations

import base64
import json

import pytest
import redis

from app.broker.config import RUN_BATCH, make_celery
from app.config import Settings
from app.model.job import build_spec
from app.store.job_store import JobStore
from tests.services import RedisServer

API = {"name": "api", "api_id": "x", "predictor": {"config": {}}}
QUEUE = "ready-test"
# The one header Batchery leaves out on purpose: `reply_to` names a client's reply queue (results
# are ignored); `body_encoding` is absent because the body is JSON, not base64.
LEFT_OUT = {"reply_to", "body_encoding"}


@pytest.fixture
def server(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def released_messages(server: RedisServer, entries: list[str], workers: int) -> tuple[dict, list[dict]]:
    """Submit a job of `entries` to a store that pushes to QUEUE; its spec and the messages pushed."""
    store = JobStore(redis.Redis.from_url(server.url), broker_queue=QUEUE)
    spec = build_spec(API, {"workers": workers, "config": {}}, "redis://h/q", 1000.0)
    store.create(spec, API, 1000.0)
    appended = store.append(spec, entries, 1000.0)
    assert appended.released == []  # pushed by the store: nothing for the caller to publish
    store.enqueued(spec, 1000.0)
    pushed = [json.loads(raw) for raw in reversed(store.redis.lrange(QUEUE, 0, -1))]  # LPUSH: oldest last
    return spec, pushed


def celery_message(server: RedisServer, args: list) -> dict:
    """The message `send_task` writes for a batch, as kombu stores it on the Redis broker."""
    client = redis.Redis.from_url(server.url)
    client.delete(QUEUE)
    make_celery(Settings(redis_url=server.url, queue=QUEUE)).send_task(RUN_BATCH, args=args)
    [raw] = client.lrange(QUEUE, 0, -1)
    return json.loads(raw)


def test_a_pushed_message_is_the_one_send_task_writes(server):
    body = json.dumps([{"text": 'a "quoted" / slashed \\ line\nand é, 日本'}, 3.5, None])
    spec, [pushed] = released_messages(server, [f"7 {body}"], workers=1)
    sent = celery_message(server, [spec["job_id"], "7", body])

    assert set(pushed) == set(sent)
    assert set(pushed["headers"]) == set(sent["headers"])
    assert set(pushed["properties"]) == set(sent["properties"]) - LEFT_OUT
    assert json.loads(pushed["body"]) == json.loads(base64.b64decode(sent["body"]))
    for name in ("content-type", "content-encoding"):
        assert pushed[name] == sent[name]
    for name in ("lang", "task", "retries", "timelimit", "eta", "expires", "group", "parent_id", "kwargsrepr"):
        assert pushed["headers"][name] == sent["headers"][name], name
    for name in ("delivery_mode", "delivery_info", "priority"):
        assert pushed["properties"][name] == sent["properties"][name], name
    task_id = pushed["headers"]["id"]
    assert pushed["headers"]["root_id"] == pushed["properties"]["correlation_id"] == task_id
    assert pushed["headers"]["argsrepr"] == f"['{spec['job_id']}', '7', ...]"  # what Flower shows


def test_every_release_pushes_messages_with_ids_of_their_own(server):
    spec, pushed = released_messages(server, [f"{i} [{i}]" for i in range(5)], workers=5)
    assert [json.loads(m["body"])[0] for m in pushed] == [[spec["job_id"], str(i), f"[{i}]"] for i in range(5)]
    ids = [m["headers"]["id"] for m in pushed] + [m["properties"]["delivery_tag"] for m in pushed]
    assert len(set(ids)) == 5  # the task id is the delivery tag: one per message
    store = JobStore(redis.Redis.from_url(server.url), broker_queue=QUEUE)
    store.redis.delete(QUEUE)
    store.record(spec, "0", "ok", 0.1, "p", 1001.0)  # frees a place: nothing waits in the backlog
    assert store.redis.llen(QUEUE) == 0


def test_the_next_batch_is_pushed_by_the_call_that_counts_one(server):
    spec, pushed = released_messages(server, [f"{i} [{i}]" for i in range(3)], workers=2)
    assert len(pushed) == 2
    store = JobStore(redis.Redis.from_url(server.url), broker_queue=QUEUE)
    outcome = store.record(spec, "0", "ok", 0.1, "p", 1001.0)
    assert outcome.released == []
    [third] = [json.loads(raw) for raw in store.redis.lrange(QUEUE, 0, 0)]
    assert json.loads(third["body"])[0] == [spec["job_id"], "2", "[2]"]
    assert third["headers"]["id"] not in {m["headers"]["id"] for m in pushed}

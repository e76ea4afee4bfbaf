"""kombu's Redis channel keeps one synchronous client (workers/kombu_patches/kept_client.py), on a real Redis."""

from __future__ import annotations

import uuid

import pytest
from kombu import Connection

from workers.kombu_patches import kept_client


@pytest.fixture
def channel(redis_server):
    kept_client.install()
    with Connection(redis_server.url) as connection:
        yield connection.default_channel


def acquired(channel):
    with channel.conn_or_acquire() as client:
        return client


def test_a_channel_keeps_one_client_for_its_calls(channel):
    assert acquired(channel) is acquired(channel)
    given = object()
    with channel.conn_or_acquire(given) as client:
        assert client is given  # a caller's own client is used as before


def test_the_client_follows_the_pool_when_kombu_replaces_it(channel):
    before = acquired(channel)
    channel._disconnect_pools()  # what kombu does when its connection to Redis is lost
    after = acquired(channel)
    assert after is not before
    assert after.connection_pool is channel.pool
    assert after.ping()


def test_messages_are_noted_unacked_and_acked_through_the_kept_client(channel, redis_server):
    queue = channel.connection.client.SimpleQueue(f"kept-{uuid.uuid4().hex[:8]}")
    try:
        for n in range(3):
            queue.put({"n": n})
        received = [queue.get(timeout=5) for _ in range(3)]
        # (the shared Redis's unacked hash may hold other tests' messages: a killed worker's)
        noted = [redis_server.client.hexists(channel.unacked_key, m.delivery_tag) for m in received]
        assert noted == [True] * 3  # QoS.append wrote each one
        for message in received:
            message.ack()
        noted = [redis_server.client.hexists(channel.unacked_key, m.delivery_tag) for m in received]
        assert noted == [False] * 3  # QoS.ack removed each one
        assert sorted(m.payload["n"] for m in received) == [0, 1, 2]
    finally:
        queue.close()

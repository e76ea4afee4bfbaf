"""kombu's Redis channel keeps one client for its synchronous calls instead of building one per call.

kombu 5.7's `Channel.conn_or_acquire()` builds a new `redis.Redis` over the channel's connection
pool for every synchronous call: the unacked bookkeeping of each message received (`QoS.append`)
and each ack (`QoS.ack`). Building one costs more CPU than the call itself (redis-py copies its
response-callback table into a new case-insensitive dict each time): ~14% of a worker's main
process per task, measured with py-spy on bench/load.py (docs/benchmarks.md). The main process is
the serial part of a worker, so this is time every task waits for, Batchery's or plain Celery's.

A `redis.Redis` holds no connection of its own (it takes one from the pool per command and gives
it back), so one per pool serves every call. It is rebuilt whenever the channel replaces its pool
(kombu drops the pools when the connection to Redis is lost), so it never outlives its pool.
Callers that pass their own client get it back, as before.
"""

from __future__ import annotations

from contextlib import contextmanager

from kombu.transport import redis as kombu_redis


def _kept_client(channel):
    pool = channel.pool  # kombu builds the pool again after a disconnect: the client follows it
    kept = getattr(channel, "_batchery_client", None)
    if kept is None or kept[0] is not pool:
        kept = (pool, channel._create_client())
        channel._batchery_client = kept
    return kept[1]


@contextmanager
def conn_or_acquire(self, client=None):
    """The client given, else the channel's kept synchronous client."""
    yield client if client else _kept_client(self)


conn_or_acquire.batchery_kept_client = True


def install() -> None:
    """Make kombu's Redis channels keep their synchronous client (idempotent)."""
    if not getattr(kombu_redis.Channel.conn_or_acquire, "batchery_kept_client", False):
        kombu_redis.Channel.conn_or_acquire = conn_or_acquire

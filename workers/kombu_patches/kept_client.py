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

Upstream: no kombu issue or pull request about this cost was found. The code path is
`kombu/transport/redis.py`, `Channel.conn_or_acquire`, which yields `self._create_client()`
(`self.Client(connection_pool=self.pool)`) whenever no client is passed in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

from workers.kombu_patches import install_once

UPSTREAM = "the cost of kombu.transport.redis Channel.conn_or_acquire (no upstream issue found)"


def _kept_client(channel: Any) -> Any:
    pool = channel.pool  # kombu builds the pool again after a disconnect: the client follows it
    kept = getattr(channel, "_batchery_client", None)
    if kept is None or kept[0] is not pool:
        kept = (pool, channel._create_client())
        channel._batchery_client = kept
    return kept[1]


@contextmanager
def conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
    """The client given, else the channel's kept synchronous client."""
    yield client if client else _kept_client(self)


def install(version: str | None = None) -> None:
    """Make kombu's Redis channels keep their synchronous client (idempotent); raises
    UnsupportedKombu on a kombu version this was not written for."""
    install_once(kombu_redis.Channel, "conn_or_acquire", lambda original: conn_or_acquire, __name__, UPSTREAM, version)

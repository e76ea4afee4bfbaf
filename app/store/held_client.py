"""A Redis client whose script calls go over a connection each thread keeps (workers' hot path).

A worker makes three script calls a batch (`BEGIN`, then `RECORD` with the batch's log lines).
Through redis-py's command path each one costs ~40 us of CPU on top of the round trip itself
(~60 us): a connection-pool checkout that polls the socket for stray data, argument filtering,
observability hooks (measured: docs/benchmarks.md, round 3). The pool
processes' CPU competes with the worker's main process for the cores, so this is written by hand:
the same `send_command`/`read_response` redis-py uses, on a connection taken from the client's
pool once per thread, with the client's retries (a Redis restart is retried through, as before:
the connection is dropped and the next attempt reconnects) and its health checks (a connection
idle past `health_check_interval` is PINGed before use, by redis-py's `send_packed_command`).
Every other command goes through redis-py as usual.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import redis
from redis.connection import AbstractConnection

T = TypeVar("T")


class HeldConnectionClient(redis.Redis):
    """`redis.Redis`, plus `execute_held` and `execute_held_many` on this thread's own connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Takes what `redis.Redis` takes (and `from_url` passes it)."""
        super().__init__(*args, **kwargs)
        self._held = threading.local()

    def _connection(self) -> AbstractConnection:
        held = getattr(self._held, "connection", None)
        if held is None or self._held.pid != os.getpid():  # a forked child opens its own
            # typed as redis-py's ConnectionInterface, which leaves out the `retry` used here; the
            # pool of a client made by `from_url` or `Redis(...)` makes AbstractConnection subclasses;
            # a Sentinel pool's connection asks the sentinels for the master whenever it reconnects
            # (app/store/connection.py), so this kept connection follows a failover on its retries
            held = cast(AbstractConnection, self.connection_pool.make_connection())
            self._held.connection, self._held.pid = held, os.getpid()
        return held

    def execute_held(self, *command: object) -> Any:
        """One command's reply. Raises redis-py's errors (a `ResponseError` for an error reply)
        once the client's retries are spent."""
        connection = self._connection()

        def attempt() -> object:
            connection.send_command(*command)
            return connection.read_response()

        return _with_retry(connection, attempt)

    def execute_held_many(self, commands: Sequence[Sequence[object]]) -> list:
        """The commands' replies, sent in one round trip; an error reply is returned in its place.
        Raises redis-py's connection errors once the client's retries are spent."""
        connection = self._connection()

        def attempt() -> list:
            connection.send_packed_command(connection.pack_commands(commands))
            replies: list = []
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except redis.ResponseError as err:
                    replies.append(err)
            return replies

        return _with_retry(connection, attempt)


def _with_retry(connection: AbstractConnection, attempt: Callable[[], T]) -> T:
    """`attempt()` with the client's retries (the connection is dropped before each new try)."""
    try:
        return connection.retry.call_with_retry(attempt, lambda error: connection.disconnect())
    except redis.ResponseError:
        raise  # an error reply, read whole: the connection is in step
    except BaseException:
        # interrupted between a command and its reply (a signal, a time limit): the next command
        # would read this one's reply. redis-py's read_response drops the connection when that
        # happens inside it; this covers the moments around it (redis-py's pool checks instead)
        connection.disconnect()
        raise

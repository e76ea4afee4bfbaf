"""A guard on kombu's Redis transport: a channel whose connection is already gone.

When the broker's Redis goes away (a restart), Celery's consumer closes its connection and opens
a new one, and kombu 5.7 lets the old channel reach for its connection after the connection let
go of its client, and the AttributeError stops the whole worker ("Unrecoverable error:
'NoneType' object has no attribute 'hostname'" or "... 'client'"). Measured in two places: the
closing channel putting its unacknowledged messages back, and a task that was running during the
outage acking its message on the old channel once it ends. Those messages are safe where they
are — in the broker's unacked set in Redis, put back by the reconnected consumer once the
visibility timeout passes — so the failure is logged and the worker goes on. Batchery counts
deliveries itself: a message delivered again is skipped (its batch is no longer in flight).

Upstream: the same failure from another caller is celery/kombu#582 (a channel closing after its
connection let go: `conn_or_acquire` reaches `_connparams`, `self.connection.client` is None);
no issue was found for the QoS path (`kombu/transport/redis.py`, `QoS.restore_unacked`, `ack`
and `reject`, each through `Channel.conn_or_acquire`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from kombu.transport import redis as kombu_redis

from workers.kombu_patches import install_once

log = logging.getLogger(__name__)

UPSTREAM = "celery/kombu#582 (the QoS path has no issue of its own)"


def _connection_gone(qos: Any) -> bool:
    transport = getattr(qos.channel, "connection", None)
    return transport is None or getattr(transport, "client", None) is None


def _guarded(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        except AttributeError as err:
            if not _connection_gone(self):
                raise
            log.warning(
                "broker connection gone (%s: %s): the unacknowledged messages stay in Redis until the visibility "
                "timeout",
                name,
                err,
            )
            return None

    return guarded


def install(version: str | None = None) -> None:
    """Wrap kombu's Redis QoS restore_unacked, ack and reject once (idempotent); raises
    UnsupportedKombu on a kombu version this was not written for."""
    for name in ("restore_unacked", "ack", "reject"):
        install_once(kombu_redis.QoS, name, partial(_guarded, name), __name__, UPSTREAM, version)

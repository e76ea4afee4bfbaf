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
"""

from __future__ import annotations

import logging

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


def _connection_gone(qos) -> bool:
    transport = getattr(qos.channel, "connection", None)
    return transport is None or getattr(transport, "client", None) is None


def _guard(name: str) -> None:
    original = getattr(kombu_redis.QoS, name)
    if getattr(original, "batchery_guard", False):
        return

    def guarded(self, *args, **kwargs):
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

    guarded.batchery_guard = True
    setattr(kombu_redis.QoS, name, guarded)


def install() -> None:
    """Wrap kombu's Redis QoS restore_unacked, ack and reject once (idempotent)."""
    for name in ("restore_unacked", "ack", "reject"):
        _guard(name)

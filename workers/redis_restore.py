"""A guard on kombu's Redis transport: closing a channel whose connection is already gone.

When the broker's Redis goes away (a restart), Celery's consumer closes its connection, and
kombu 5.7 closes the default channel after the connection object has let go of its client; the
channel then tries to put its unacknowledged messages back, builds a new Redis client from the
missing connection info, and the AttributeError stops the whole worker ("Unrecoverable error:
'NoneType' object has no attribute 'hostname'"). Those messages are safe where they are — in the
broker's unacked set in Redis, put back by the reconnected consumer once the visibility timeout
passes — so the failed restore is logged and the worker reconnects. Batchery counts deliveries
itself, so a message delivered again is not counted twice.
"""

from __future__ import annotations

import logging

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


def install() -> None:
    """Wrap kombu's Redis QoS.restore_unacked once (idempotent)."""
    original = kombu_redis.QoS.restore_unacked
    if getattr(original, "batchery_guard", False):
        return

    def restore_unacked(self, client=None):
        try:
            return original(self, client)
        except AttributeError as err:
            if getattr(self.channel.connection, "client", None) is not None:
                raise
            log.warning(
                "broker connection gone: %d unacknowledged messages stay in Redis until the visibility timeout (%s)",
                len(self._delivered),
                err,
            )
            return None

    restore_unacked.batchery_guard = True
    kombu_redis.QoS.restore_unacked = restore_unacked

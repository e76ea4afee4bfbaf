"""A worker says which queues it serves, and with how many pool processes, while it lives.

The worker's main process writes an entry per queue when it is ready (app/store/pools.py), renews
it from a thread, and removes it on a warm shutdown; a worker killed outright leaves entries that
expire. The API counts the processes of each queue from them (`batchery_queue_processes`), and a
job whose queue no live worker serves says so in its status at once.

A worker of the control lane (BATCHERY_LANE=control) serves only control queues: its entries name
those (`<queue>-control`), so it does not count as a process that runs batches.
"""

from __future__ import annotations

import logging

import redis

from app.broker.config import consumed_queues
from app.config import Settings
from app.model.queues import CONTROL_SUFFIX
from app.store.connection import store_client
from app.store.pools import RENEW_SECONDS, Pools
from workers.heartbeat import beat_forever

log = logging.getLogger(__name__)


class Served:
    """This worker's entries in the job store: the queues it consumes and its pool's size."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.queues = consumed_queues(settings)
        self.node = ""
        self.processes = 0
        self.pools: Pools | None = None

    def on_worker_ready(self, sender: object = None, **kwargs: object) -> None:
        """Say which queues this worker serves, and keep saying so while it lives."""
        self.node = str(getattr(sender, "hostname", "") or "worker")
        controller = getattr(sender, "controller", None)
        self.processes = int(getattr(controller, "concurrency", 0) or 1)
        client = store_client(self.settings.redis_url, self.settings, socket_timeout=5, socket_connect_timeout=5)
        self.pools = Pools(client)
        self._serve()
        beat_forever(self._serve, RENEW_SECONDS, "batchery-pools")
        batches = [queue for queue in self.queues if not queue.endswith(CONTROL_SUFFIX)]
        log.info(
            "serving queues %s with %d processes (lane %s; batches of %s)",
            ", ".join(self.queues),
            self.processes,
            self.settings.lane,
            ", ".join(batches) or "no queue: control work only",
        )

    def _serve(self) -> None:
        if self.pools is not None:
            self.pools.serve(self.node, self.queues, self.processes)

    def on_worker_shutdown(self, **kwargs: object) -> None:
        """Say this worker no longer serves its queues (a warm shutdown)."""
        if self.pools is None:
            return
        try:
            self.pools.leave(self.node, self.queues)
        except redis.RedisError as err:  # its entries expire all the same
            log.warning("could not remove this worker's queues from the job store: %s", err)

"""`/healthz`: does the job store's Redis answer, and does the broker?"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import redis

from app.broker.queue import TIMEOUT_SECONDS, BrokerQueue
from app.config import Settings, redacted
from app.store.connection import store_client


class Health:
    """Checks with short timeouts, so that a hung dependency makes a quick 503, not a hung probe."""

    def __init__(self, settings: Settings, broker_queue: BrokerQueue):
        self.settings = settings
        self.broker_queue = broker_queue

    @cached_property
    def redis(self) -> redis.Redis:
        return store_client(
            self.settings.redis_url,
            self.settings,
            socket_timeout=TIMEOUT_SECONDS,
            socket_connect_timeout=TIMEOUT_SECONDS,
        )

    def check(self) -> tuple[dict, int]:
        """`({"status": "ok", "redis": "ok", "broker": "ok"}, 200)`, or 503 with each failure named."""
        report = {"redis": _probe(self.redis.ping), "broker": _probe(self.broker_queue.ping)}
        healthy = all(value == "ok" for value in report.values())
        return {"status": "ok" if healthy else "unhealthy", **report}, 200 if healthy else 503


def _probe(call: Callable[[], object]) -> str:
    try:
        call()
    except Exception as err:  # noqa: BLE001 - any failure to reach a dependency means unhealthy
        message = redacted(str(err))
        return f"error: {type(err).__name__}: {message}"
    return "ok"

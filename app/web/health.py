"""`/healthz`: does the job store's Redis answer, and does the broker?"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import cached_property

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.broker.config import is_sqs
from app.broker.queue import BrokerQueue
from app.config import Settings, redacted
from app.store.connection import store_client

# A probe of one Redis: connecting and PING each have this long, with no retry (redis-py retries
# a timed-out command by default: against a hung Redis, /healthz took 4 s).
REDIS_SECONDS = 0.5
# The whole check answers within this long, whatever hangs (the SQS call's own timeouts are 2 s):
# a load balancer's or a kubelet's probe, often 1 s or 2 s, gets a 503 saying why, not a timeout.
CHECK_SECONDS = 1.0


class Health:
    """Checks with short timeouts, run side by side, so that a hung dependency makes a quick 503,
    not a hung probe."""

    def __init__(self, settings: Settings, broker_queue: BrokerQueue):
        self.settings = settings
        self.broker_queue = broker_queue
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="healthz")

    @cached_property
    def store_redis(self) -> redis.Redis:
        """The job store's Redis, for the probe only: it answers or fails within REDIS_SECONDS."""
        return _quick_redis(self.settings.redis_url, self.settings)

    @cached_property
    def broker_redis(self) -> redis.Redis:
        """The Redis broker, for the probe only (the same quick client)."""
        return _quick_redis(self.settings.broker, self.settings)

    def _ping_broker(self) -> None:
        if is_sqs(self.settings):
            self.broker_queue.ping()
        else:
            self.broker_redis.ping()

    def check(self) -> tuple[dict, int]:
        """`({"status": "ok", "redis": "ok", "broker": "ok"}, 200)`, or 503 with each failure named."""
        probes: dict[str, Callable[[], object]] = {"redis": self.store_redis.ping, "broker": self._ping_broker}
        futures = {name: self._pool.submit(_probe, call) for name, call in probes.items()}
        deadline = time.monotonic() + CHECK_SECONDS
        report = {name: _by(future, deadline) for name, future in futures.items()}
        healthy = all(value == "ok" for value in report.values())
        return {"status": "ok" if healthy else "unhealthy", **report}, 200 if healthy else 503


def _quick_redis(url: str, settings: Settings) -> redis.Redis:
    return store_client(
        url,
        settings,
        socket_timeout=REDIS_SECONDS,
        socket_connect_timeout=REDIS_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )


def _by(future: Future, deadline: float) -> str:
    """The probe's report, or an error if it has not answered by `deadline` (a monotonic time; the
    probe is left to its own timeout)."""
    try:
        return future.result(timeout=max(deadline - time.monotonic(), 0.0))
    except FutureTimeout:
        return f"error: TimeoutError: no answer within {CHECK_SECONDS:g}s"


def _probe(call: Callable[[], object]) -> str:
    try:
        call()
    except Exception as err:  # noqa: BLE001 - any failure to reach a dependency means unhealthy
        message = redacted(str(err))
        return f"error: {type(err).__name__}: {message}"
    return "ok"

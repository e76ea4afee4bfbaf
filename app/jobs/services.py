"""The objects a process needs to talk to Redis and the broker, built once from the settings."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from app.broker.config import is_sqs, make_celery, public_queue_url
from app.broker.dead_letters import RedisDeadLetters, SqsDeadLetters
from app.broker.dispatch import Dispatcher
from app.broker.queue import BrokerQueue
from app.config import Settings
from app.jobs.submission import Submitter
from app.store.connection import store_client
from app.store.held_client import HeldConnectionClient
from app.store.job_store import JobStore
from app.store.joblog import JobLog
from app.store.registry import Registry


def direct_queue(settings: Settings) -> str:
    """The broker list the job store pushes batch messages to itself: the queue, when the broker
    is the job store's own Redis (same URL); "" otherwise (SQS, another Redis), and the released
    batches are published with `send_task`."""
    return settings.queue if not is_sqs(settings) and settings.broker == settings.redis_url else ""


@dataclass
class Services:
    """Job store, registry, dispatcher and submitter over one Redis client; the broker's queue."""

    settings: Settings
    redis: redis.Redis
    registry: Registry
    store: JobStore
    dispatcher: Dispatcher
    dead_letters: RedisDeadLetters | SqsDeadLetters
    submitter: Submitter
    job_log: JobLog
    broker_queue: BrokerQueue

    @classmethod
    def build(cls, settings: Settings, celery: object | None = None, patient: bool = False) -> Services:
        """Connect to the job store and the broker named by `settings`. A `patient` process (a
        worker) retries the job store through an outage of `store_outage_seconds` (a Redis restart):
        a batch whose outcome cannot be counted would otherwise be acked and lost. The API is not
        patient: it answers 503 at once and its clients retry."""
        options: dict = {"health_check_interval": 30}
        if patient and settings.store_outage_seconds > 0:
            # backoff capped at 1 s, so about one retry a second through the outage
            options["retry"] = Retry(ExponentialBackoff(cap=1.0, base=0.05), int(settings.store_outage_seconds) + 5)
        # a worker's script calls, three a batch, on a connection each thread keeps (app/store/held_client.py)
        client_class = HeldConnectionClient if patient else redis.Redis
        client = store_client(settings.redis_url, settings, client_class, **options)
        registry = Registry(client)
        store = JobStore(
            client,
            settings.stalled_seconds,
            broker_queue=direct_queue(settings),
            lease_seconds=settings.enqueue_lease_seconds,
            job_log_lines=settings.job_log_lines,
            max_in_broker=settings.max_in_broker,
            default_queue=settings.queue,
            retention_seconds=settings.job_retention_seconds,
        )
        dispatcher = Dispatcher(celery or make_celery(settings))
        dead_letters = SqsDeadLetters() if is_sqs(settings) else RedisDeadLetters(client)
        job_log = JobLog(client, settings.job_log_lines)
        submitter = Submitter(
            registry,
            store,
            dispatcher,
            dead_letters,
            job_log,
            public_queue_url(settings),
            queue_urls=functools.partial(public_queue_url, settings),
            default_queue=settings.queue,
        )
        return cls(
            settings,
            client,
            registry,
            store,
            dispatcher,
            dead_letters,
            submitter,
            job_log,
            BrokerQueue(settings),
        )

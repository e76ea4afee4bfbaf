"""Settings, read from the environment (the names are the contract in the README)."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Deployed at start when Batchery runs from its repository; an installed package has no examples.
EXAMPLE_APIS = ROOT / "examples" / "cortex.yaml"

MAX_BODY_BYTES = 10 * 1024 * 1024  # Cortex: the request must be under 10 MiB
MAX_BATCH_BYTES = 256 * 1024  # Cortex: every batch must be under 256 KiB (an SQS message)

# `scheme://user:password@host` loses its user and password
CREDENTIALS = re.compile(r"(\w+://)[^/@\s]*@")


def redacted(text: str) -> str:
    """`text` with the credentials of every URL in it masked (`redis://***@host`): safe to show or log."""
    if "@" not in text:  # no credentials without an @ (and every log line passes here: skip the regex)
        return text
    return CREDENTIALS.sub(r"\1***@", text)


# How long an ended job is kept (BATCHERY_JOB_RETENTION_SECONDS): 14 days.
DEFAULT_JOB_RETENTION_SECONDS = 14 * 86400


@dataclass(frozen=True)
class Settings:
    """Where Batchery finds its services and what it deploys at start."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = ""
    apis_file: str = str(EXAMPLE_APIS) if EXAMPLE_APIS.exists() else ""
    queue: str = "batchery"
    visibility_timeout: int = 3600
    recent_jobs: int = 50
    watchdog_seconds: float = 10.0
    stalled_seconds: float = 600.0  # Cortex: a worker pending this long is stalled
    store_outage_seconds: float = 30.0  # workers wait this long for the job store's Redis to come back
    lost_seconds: float = 120.0  # a batch released, or a finalizer claimed, this long ago and idle was lost
    # ...and this long ago, if the process that had to publish its message never said it did
    unpublished_seconds: float = 10.0
    sqs_region: str = "us-east-1"
    sqs_queue_prefix: str = ""
    sqs_visibility_timeout: int = 60
    task_events: bool = False  # workers send task events from the start (Flower turns them on anyway)
    predictor_cache: int = 16  # predictors (of different jobs) a worker process keeps loaded, at most
    # ...and one whose RSS is over this once it made one drops the others, least recently used first (0: no limit)
    predictor_memory_bytes: int = 2 << 30
    api_token: str = field(default="", repr=False)  # empty: no auth; never shown in a repr or a log
    enqueue_lease_seconds: float = 30.0  # an S3 enqueuer silent this long is presumed dead; another resumes
    job_log_lines: int = 10_000  # lines of each job's log kept in Redis
    log_format: str = "json"  # process logs: one JSON object a line, or "text"
    idempotency_seconds: int = 86400  # an Idempotency-Key answers with its job this long
    output_store_bytes: int = 64 << 20  # a job's predictions kept in the job store (`output: {store: redis}`) at most
    webhook_secret: str = field(default="", repr=False)  # signs completion webhooks; empty: none taken
    webhook_retry_seconds: float = 86400.0  # a failing webhook is retried this long after the job ended
    webhook_backoff_seconds: float = 10.0  # the first retry's delay; each next one doubles (at most an hour)
    webhook_deny_private: bool = False  # refuse webhook targets on loopback, link-local, private addresses
    # where workers unpack the deployed projects they run (workers/projects.py), and how long an unused one stays
    project_cache: str = field(default_factory=lambda: os.path.join(tempfile.gettempdir(), "batchery-projects"))
    project_cache_seconds: float = 86400.0
    max_project_bytes: int = 268435456  # a deployed project, packed (project_archive.MAX_PROJECT_BYTES)
    max_in_broker: int = 1000  # a job's messages waiting in the broker at once, at most (whatever its workers)
    # a message runs the job's next batches after its own while they fit in this many seconds (a
    # bundle: workers/tasks.py); 0: one batch per message
    bundle_seconds: float = 0.05
    # the queues a worker serves (empty: the default queue), and its lane: `all` (their batches and
    # their control queues) or `control` (only the control queues: the process reserved for them)
    queues: tuple[str, ...] = ()
    lane: str = "all"
    job_retention_seconds: int = DEFAULT_JOB_RETENTION_SECONDS  # an ended job's keys expire this long after its end
    # with a sentinel:// REDIS_URL or BROKER_URL (app/store/connection.py): the master's name, and the
    # sentinels' own password (the master's is in the URL); never shown in a repr or a log
    redis_sentinel_master: str = "mymaster"
    redis_sentinel_password: str = field(default="", repr=False)
    redis_sentinel_wait_ms: int = 1000  # writes that must survive a failover wait this long for a replica; 0: never

    @property
    def served_queues(self) -> tuple[str, ...]:
        """The queues a worker serves: BATCHERY_QUEUES, else the default queue."""
        return self.queues or (self.queue,)

    @property
    def broker(self) -> str:
        """The broker URL: BROKER_URL, else the job store's Redis."""
        return self.broker_url or self.redis_url

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from environment variables (unset ones keep their defaults); raises
        ValueError for a number that is not one. The only place the server side reads them."""
        return cls._from(os.environ if env is None else env)

    @classmethod
    def _from(cls, env: Mapping[str, str]) -> Settings:
        default = cls()
        return cls(
            redis_url=env.get("REDIS_URL") or default.redis_url,
            broker_url=env.get("BROKER_URL", ""),
            apis_file=env.get("BATCHERY_APIS", default.apis_file),
            queue=env.get("BATCHERY_QUEUE", default.queue),
            visibility_timeout=int(env.get("BATCHERY_VISIBILITY_TIMEOUT", default.visibility_timeout)),
            recent_jobs=int(env.get("BATCHERY_RECENT_JOBS", default.recent_jobs)),
            watchdog_seconds=float(env.get("BATCHERY_WATCHDOG_SECONDS", default.watchdog_seconds)),
            stalled_seconds=float(env.get("BATCHERY_STALLED_SECONDS", default.stalled_seconds)),
            store_outage_seconds=float(env.get("BATCHERY_STORE_OUTAGE_SECONDS", default.store_outage_seconds)),
            lost_seconds=float(env.get("BATCHERY_LOST_SECONDS", default.lost_seconds)),
            unpublished_seconds=float(env.get("BATCHERY_UNPUBLISHED_SECONDS", default.unpublished_seconds)),
            sqs_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or default.sqs_region,
            sqs_queue_prefix=env.get("BATCHERY_SQS_QUEUE_PREFIX", default.sqs_queue_prefix),
            sqs_visibility_timeout=int(env.get("BATCHERY_SQS_VISIBILITY_TIMEOUT", default.sqs_visibility_timeout)),
            task_events=env.get("BATCHERY_TASK_EVENTS", "").strip().lower() in ("1", "true", "yes", "on"),
            predictor_cache=_at_least_one(
                "BATCHERY_PREDICTOR_CACHE", env.get("BATCHERY_PREDICTOR_CACHE"), default.predictor_cache
            ),
            predictor_memory_bytes=int(env.get("BATCHERY_PREDICTOR_MEMORY_BYTES", default.predictor_memory_bytes)),
            api_token=env.get("BATCHERY_API_TOKEN", "").strip(),
            enqueue_lease_seconds=float(env.get("BATCHERY_ENQUEUE_LEASE", default.enqueue_lease_seconds)),
            job_log_lines=int(env.get("BATCHERY_JOB_LOG_LINES", default.job_log_lines)),
            log_format=env.get("BATCHERY_LOG_FORMAT", default.log_format),
            idempotency_seconds=int(env.get("BATCHERY_IDEMPOTENCY_SECONDS", default.idempotency_seconds)),
            output_store_bytes=int(env.get("BATCHERY_OUTPUT_STORE_BYTES", default.output_store_bytes)),
            webhook_secret=env.get("BATCHERY_WEBHOOK_SECRET", "").strip(),
            webhook_retry_seconds=float(env.get("BATCHERY_WEBHOOK_RETRY_SECONDS", default.webhook_retry_seconds)),
            webhook_backoff_seconds=float(env.get("BATCHERY_WEBHOOK_BACKOFF_SECONDS", default.webhook_backoff_seconds)),
            webhook_deny_private=env.get("BATCHERY_WEBHOOK_DENY_PRIVATE", "").strip().lower()
            in ("1", "true", "yes", "on"),
            project_cache=env.get("BATCHERY_PROJECT_CACHE") or default.project_cache,
            project_cache_seconds=float(env.get("BATCHERY_PROJECT_CACHE_SECONDS", default.project_cache_seconds)),
            max_project_bytes=int(env.get("BATCHERY_MAX_PROJECT_BYTES", default.max_project_bytes)),
            max_in_broker=_at_least_one(
                "BATCHERY_MAX_IN_BROKER", env.get("BATCHERY_MAX_IN_BROKER"), default.max_in_broker
            ),
            bundle_seconds=_not_negative(
                "BATCHERY_BUNDLE_SECONDS", env.get("BATCHERY_BUNDLE_SECONDS"), default.bundle_seconds
            ),
            queues=_names(env.get("BATCHERY_QUEUES", "")),
            lane=_lane(env.get("BATCHERY_LANE", default.lane)),
            job_retention_seconds=int(env.get("BATCHERY_JOB_RETENTION_SECONDS", default.job_retention_seconds)),
            redis_sentinel_master=env.get("REDIS_SENTINEL_MASTER") or default.redis_sentinel_master,
            redis_sentinel_password=env.get("REDIS_SENTINEL_PASSWORD", ""),
            redis_sentinel_wait_ms=int(env.get("REDIS_SENTINEL_WAIT_MS", default.redis_sentinel_wait_ms)),
        )


def _at_least_one(name: str, value: str | None, default: int) -> int:
    """An integer setting that must be 1 or more: `value`, else `default`. Raises ValueError
    naming the variable for anything else."""
    number = int(value) if value else default
    if number < 1:
        raise ValueError(f"{name} must be 1 or more, not {value}")
    return number


def _not_negative(name: str, value: str | None, default: float) -> float:
    """A number of seconds, 0 or more (unset: `default`). Raises ValueError for anything else."""
    seconds = default if value is None or not value.strip() else float(value)
    if not seconds >= 0:  # NaN too
        raise ValueError(f"{name} must be 0 or more seconds, not {value!r}")
    return seconds


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names, blanks dropped."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


LANES = ("all", "control")


def _lane(text: str) -> str:
    """BATCHERY_LANE, checked; raises ValueError for another value."""
    lane = text.strip().lower() or "all"
    if lane not in LANES:
        raise ValueError(f"BATCHERY_LANE={text!r}: use all (batches and control work) or control (control work only)")
    return lane


@dataclass(frozen=True)
class ClientEnv:
    """What the Python client and the CLI take from the environment when not told otherwise."""

    url: str  # BATCHERY_URL, else the API `make up` starts: http://127.0.0.1:$PORT (8080)
    token: str = field(default="", repr=False)  # BATCHERY_API_TOKEN; empty: send none
    redis_url: str = ""  # REDIS_URL, else the Redis `make up` starts: redis://127.0.0.1:$REDIS_PORT/0
    redis_sentinel_master: str = "mymaster"  # REDIS_SENTINEL_MASTER, for a sentinel:// REDIS_URL
    redis_sentinel_password: str = field(default="", repr=False)  # REDIS_SENTINEL_PASSWORD


def client_env(env: Mapping[str, str] | None = None) -> ClientEnv:
    """The client side's defaults, read from `env` (the process environment when None).

    The one place the client and the CLI read the environment, so that both follow the same rule:
    an explicit argument, else the environment, else nothing (or `make up`'s local address).
    """
    env = os.environ if env is None else env
    return ClientEnv(
        url=env.get("BATCHERY_URL") or f"http://127.0.0.1:{env.get('PORT') or 8080}",
        token=env.get("BATCHERY_API_TOKEN", "").strip(),
        redis_url=env.get("REDIS_URL") or f"redis://127.0.0.1:{env.get('REDIS_PORT') or 6379}/0",
        redis_sentinel_master=env.get("REDIS_SENTINEL_MASTER") or "mymaster",
        redis_sentinel_password=env.get("REDIS_SENTINEL_PASSWORD", ""),
    )

"""Each job's own log: bounded lines in Redis, readable through the API and `batchery logs`.

Workers and the enqueuer log with the standard `logging` module; while a task runs, the job it
works for is in a context variable, and `JobLogHandler` copies every record made in that context
(Batchery's and the predictor's own) into the job's log. `JsonFormatter` makes process logs one
JSON object a line, with `api_name` and `job_id` when there is a job.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from app import keys

MAX_LINES = int(os.environ.get("BATCHERY_JOB_LOG_LINES", "10000"))

# Number the line and keep the last ARGV[2]; ARGV[1] is the line's JSON object without its braces.
APPEND = """
local seq = redis.call('INCR', KEYS[2])
local sep = ARGV[1] == '' and '' or ','
redis.call('RPUSH', KEYS[1], '{"seq":' .. seq .. sep .. ARGV[1] .. '}')
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
return seq
"""

current_job: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("batchery_job", default=None)
# The job store the current job's log lines go to: the one of the app or worker running it (one
# process may hold several apps, each on its own Redis, as the tests do).
current_log: contextvars.ContextVar[JobLog | None] = contextvars.ContextVar("batchery_job_log", default=None)


@contextmanager
def for_job(api_name: str, job_id: str, job_log: JobLog | None = None) -> Iterator[None]:
    """Attribute the log records made inside the block to a job (written to `job_log`)."""
    token = current_job.set((api_name, job_id))
    log_token = current_log.set(job_log) if job_log is not None else None
    try:
        yield
    finally:
        current_job.reset(token)
        if log_token is not None:
            current_log.reset(log_token)


class JobLog:
    """The lines of one job's log, numbered so that a reader can follow from where it stopped."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._append = client.register_script(APPEND)

    def write(self, job_id: str, line: dict) -> None:
        """Append a line (keeps the last MAX_LINES): one round trip."""
        self._append(keys=[keys.job_log(job_id), keys.job_log_seq(job_id)], args=[json.dumps(line)[1:-1], MAX_LINES])

    def read(self, job_id: str, after: int = 0, limit: int = 1000) -> list[dict]:
        """Lines numbered above `after`, oldest first, at most `limit`."""
        lines = [json.loads(raw) for raw in self.redis.lrange(keys.job_log(job_id), 0, -1)]
        return [line for line in lines if line["seq"] > after][:limit]


def _line(record: logging.LogRecord, job: tuple[str, str] | None) -> dict:
    line = {
        "time": record.created,
        "level": record.levelname.lower(),
        "logger": record.name,
        "message": record.getMessage(),
        "process": f"{socket.gethostname()}:{record.process}",
    }
    if job:
        line["api_name"], line["job_id"] = job
    if record.exc_info:
        line["traceback"] = "".join(traceback.format_exception(*record.exc_info))
    return line


class JobLogHandler(logging.Handler):
    """Copies the records made while a job's task runs into that job's log."""

    def __init__(self, job_log: JobLog, level: int = logging.INFO):
        super().__init__(level)
        self.job_log = job_log

    def emit(self, record: logging.LogRecord) -> None:
        job = current_job.get()
        if job is None or record.name.startswith(("botocore", "urllib3", "kombu", "celery")):
            return
        try:
            (current_log.get() or self.job_log).write(job[1], _line(record, job))
        except Exception:  # noqa: BLE001 - a log line must never fail the batch
            self.handleError(record)


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with `api_name` and `job_id` while a job's task runs."""

    def format(self, record: logging.LogRecord) -> str:
        line = _line(record, current_job.get())
        line["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        return json.dumps(line)


def attach_job_log(job_log: JobLog) -> None:
    """Copy every record made for a job into the job's log (once per process)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, JobLogHandler):
            root.removeHandler(handler)
    root.addHandler(JobLogHandler(job_log))
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


def configure_process_logging(job_log: JobLog, level: str | int = "INFO") -> None:
    """Root logging for a worker or API process: JSON lines on stderr (BATCHERY_LOG_FORMAT=text for
    plain text), and every record made for a job copied into the job's log."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "batchery", False):
            root.removeHandler(handler)
    stream = logging.StreamHandler()
    stream.batchery = True
    if os.environ.get("BATCHERY_LOG_FORMAT", "json") == "json":
        stream.setFormatter(JsonFormatter())
    else:
        stream.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"))
    root.addHandler(stream)
    attach_job_log(job_log)
    root.setLevel(level if isinstance(level, int) else level.upper())

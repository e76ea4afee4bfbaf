"""Each job's own log: bounded lines in Redis, readable through the API and `batchery logs`.

Workers and the enqueuer log with the standard `logging` module; while a task runs, the job it
works for is in a context variable, and `JobLogHandler` copies every record made in that context
(Batchery's and the predictor's own) into the job's log. `JsonFormatter` makes process logs one
JSON object a line, with `api_name` and `job_id` when there is a job.
"""

from __future__ import annotations

import collections
import contextvars
import json
import logging
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from app import keys
from app.config import redacted

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
    """Attribute the log records made inside the block to a job (written to `job_log`); the lines
    written in the background are in Redis when the block ends."""
    token = current_job.set((api_name, job_id))
    log_token = current_log.set(job_log) if job_log is not None else None
    try:
        yield
    finally:
        current_job.reset(token)
        if log_token is not None:
            current_log.reset(log_token)
        for (_, pid), writer in list(_writers.items()):
            if pid == os.getpid():  # a forked process has no thread behind its parent's writers
                writer.flush(FLUSH_SECONDS)


class JobLog:
    """The lines of one job's log, numbered so that a reader can follow from where it stopped."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._append = client.register_script(APPEND)

    def write(self, job_id: str, line: dict, client: object = None) -> None:
        """Append a line (keeps the last MAX_LINES): one round trip (or a command in `client`, a pipeline)."""
        self._append(
            keys=[keys.job_log(job_id), keys.job_log_seq(job_id)],
            args=[json.dumps(line)[1:-1], MAX_LINES],
            client=client,
        )

    def write_soon(self, job_id: str, line: dict) -> None:
        """Append a line from this process's background writer: the caller does not wait for Redis."""
        key = (id(self), os.getpid())
        writer = _writers.get(key)
        if writer is None:  # one per process: a forked pool process starts its own
            writer = _writers[key] = BackgroundWriter(self)
        writer.put(job_id, line)

    def read(self, job_id: str, after: int = 0, limit: int = 1000) -> list[dict]:
        """Lines numbered above `after`, oldest first, at most `limit`."""
        lines = [json.loads(raw) for raw in self.redis.lrange(keys.job_log(job_id), 0, -1)]
        return [line for line in lines if line["seq"] > after][:limit]


# A task waits this long at its end for its log lines to reach Redis (longer only if Redis is down).
FLUSH_SECONDS = 5.0


class BackgroundWriter:
    """A thread that writes a process's job-log lines in order, as many per round trip as are waiting.

    A worker logs two lines per batch; written inline they were two Redis round trips on every
    batch's path. Lines reach Redis within a round trip of being logged, and every task waits for
    its own at its end (`for_job`), so a line can be lost only with a process killed mid-task.
    """

    def __init__(self, job_log: JobLog):
        self.job_log = job_log
        self.lines: collections.deque[tuple[str, dict]] = collections.deque()
        self.idle = threading.Condition()
        self.wakeup = threading.Event()
        self.busy = False
        threading.Thread(target=self._run, name="job-log-writer", daemon=True).start()

    def put(self, job_id: str, line: dict) -> None:
        """Queue a line."""
        self.lines.append((job_id, line))
        self.wakeup.set()

    def flush(self, timeout: float) -> None:
        """Wait until every line queued so far is written (or `timeout` passed)."""
        with self.idle:
            self.idle.wait_for(lambda: not self.lines and not self.busy, timeout)

    def _run(self) -> None:
        while True:
            self.wakeup.wait()
            self.wakeup.clear()
            while self.lines:
                with self.idle:
                    self.busy = True
                taken = [self.lines.popleft() for _ in range(min(len(self.lines), 500))]
                try:
                    pipe = self.job_log.redis.pipeline(transaction=False)
                    for job_id, line in taken:
                        self.job_log.write(job_id, line, client=pipe)
                    pipe.execute()
                except Exception as err:  # noqa: BLE001 - a log line must never fail the batch
                    sys.stderr.write(f"job log: {len(taken)} lines not written: {redacted(str(err))}\n")
                finally:
                    with self.idle:
                        self.busy = False
                        self.idle.notify_all()


_writers: dict[tuple[int, int], BackgroundWriter] = {}


def _line(record: logging.LogRecord, job: tuple[str, str] | None) -> dict:
    line = {
        "time": record.created,
        "level": record.levelname.lower(),
        "logger": record.name,
        "message": redacted(record.getMessage()),  # a URL with a password in an error loses the password
        "process": f"{socket.gethostname()}:{record.process}",
    }
    if job:
        line["api_name"], line["job_id"] = job
    if record.exc_info:
        line["traceback"] = redacted("".join(traceback.format_exception(*record.exc_info)))
    return line


class JobLogHandler(logging.Handler):
    """Copies the records made while a job's task runs into that job's log."""

    def __init__(self, job_log: JobLog, level: int = logging.INFO, background: bool = False):
        super().__init__(level)
        self.job_log = job_log
        self.background = background  # workers: lines are written by a thread, off the batch's path

    def emit(self, record: logging.LogRecord) -> None:
        job = current_job.get()
        if job is None or record.name.startswith(("botocore", "urllib3", "kombu", "celery")):
            return
        try:
            job_log = current_log.get() or self.job_log
            if self.background:
                job_log.write_soon(job[1], _line(record, job))
            else:
                job_log.write(job[1], _line(record, job))
        except Exception:  # noqa: BLE001 - a log line must never fail the batch
            self.handleError(record)


class TextFormatter(logging.Formatter):
    """Plain text lines (BATCHERY_LOG_FORMAT=text), URL credentials masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redacted(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with `api_name` and `job_id` while a job's task runs."""

    def format(self, record: logging.LogRecord) -> str:
        line = _line(record, current_job.get())
        line["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        return json.dumps(line)


def attach_job_log(job_log: JobLog, background: bool = False) -> None:
    """Copy every record made for a job into the job's log (once per process); `background`: from
    a writer thread (workers)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, JobLogHandler):
            root.removeHandler(handler)
    root.addHandler(JobLogHandler(job_log, background=background))
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


def configure_process_logging(job_log: JobLog, level: str | int = "INFO", background: bool = False) -> None:
    """Root logging for a worker or API process: JSON lines on stderr (BATCHERY_LOG_FORMAT=text for
    plain text), and every record made for a job copied into the job's log (`background`: by a
    writer thread)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "batchery", False):
            root.removeHandler(handler)
    stream = logging.StreamHandler()
    stream.batchery = True
    if os.environ.get("BATCHERY_LOG_FORMAT", "json") == "json":
        stream.setFormatter(JsonFormatter())
    else:
        stream.setFormatter(TextFormatter("[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"))
    root.addHandler(stream)
    attach_job_log(job_log, background=background)
    root.setLevel(level if isinstance(level, int) else level.upper())

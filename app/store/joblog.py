"""Each job's own log: bounded lines in Redis, readable through the API and `batchery logs`.

Workers and the enqueuer log with the standard `logging` module; while a task runs, the job it
works for is in a context variable, and `JobLogHandler` copies every record made in that context
(Batchery's and the predictor's own) into the job's log. `JsonFormatter` makes process logs one
JSON object a line, with `api_name` and `job_id` when there is a job.
"""

from __future__ import annotations

import collections
import contextvars
import functools
import itertools
import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import redis

from app.config import redacted
from app.store import keys
from app.store.scripts import Call, lua_file, run_together

log = logging.getLogger(__name__)

# `extra=` of a record that stays out of the job's log (a line the job store already wrote there)
NOT_IN_JOB_LOG = {"job_log": False}

current_job: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("batchery_job", default=None)
# The job store the current job's log lines go to: the one of the app or worker running it (one
# process may hold several apps, each on its own Redis, as the tests do).
current_log: contextvars.ContextVar[JobLog | None] = contextvars.ContextVar("batchery_job_log", default=None)


# The job a worker process runs now, for the records of threads its task started (a new thread
# does not inherit context variables): a worker runs one task at a time (`adopt_threads`).
_task_job: tuple[str, str] | None = None
_adopt_threads = False
LIBRARY_LOGGERS = ("botocore", "urllib3", "kombu", "celery")  # never in a job's log
OWN_LOGGERS = ("app.", "workers.", *LIBRARY_LOGGERS)  # never adopted from a task's threads


@contextmanager
def for_job(api_name: str, job_id: str, job_log: JobLog | None = None) -> Iterator[None]:
    """Attribute the log records made inside the block to a job (written to `job_log`); the lines
    written in the background are in Redis when the block ends."""
    global _task_job
    token = current_job.set((api_name, job_id))
    log_token = current_log.set(job_log) if job_log is not None else None
    outer, _task_job = _task_job, (api_name, job_id)
    try:
        yield
    finally:
        _task_job = outer
        current_job.reset(token)
        if log_token is not None:
            current_log.reset(log_token)
        flush_lines()


def adopt_task_threads() -> None:
    """In this process (a worker's pool process), records of the user's code in threads a task
    started belong to the task's job: one task runs at a time."""
    global _adopt_threads
    _adopt_threads = True


def job_of(record: logging.LogRecord) -> tuple[str, str] | None:
    """The (api_name, job_id) a record was made for: the context's, or in a worker the running
    task's for a record of the user's code in a thread the task started."""
    job = current_job.get()
    if job is None and _adopt_threads and not record.name.startswith(OWN_LOGGERS):
        return _task_job
    return job


class JobLog:
    """The lines of one job's log, numbered so that a reader can follow from where it stopped."""

    def __init__(self, client: redis.Redis, max_lines: int = 10_000):
        """`max_lines`: the lines each job's log keeps, the last ones (BATCHERY_JOB_LOG_LINES)."""
        self.redis = client
        self.max_lines = max_lines
        self._append = client.register_script(lua_file("job_log_append"))
        self._read = client.register_script(lua_file("job_log_read"))

    def write(self, job_id: str, line: dict, client: redis.Redis | None = None) -> None:
        """Append a line (keeps the last `max_lines`): one round trip (or a command in `client`, a pipeline)."""
        self.write_lines(job_id, [line], client)

    def write_lines(self, job_id: str, lines: list[dict], client: redis.Redis | None = None) -> None:
        """Append lines, in order, in one round trip (or one command in `client`, a pipeline)."""
        self.append_call(job_id, lines).run(client)

    def append_call(self, job_id: str, lines: list[dict]) -> Call:
        """The script call that appends `lines`, to run along with others (app/store/scripts.py)."""
        keys_ = [keys.job_log(job_id), keys.job_log_seq(job_id), keys.job(job_id)]  # job: its retention
        return Call(self._append, keys_, [self.max_lines, *(json.dumps(line)[1:-1] for line in lines)])

    def write_soon(self, job_id: str, line: dict) -> None:
        """Append a line from this process's background writer: the caller does not wait for Redis."""
        key = (id(self), os.getpid())
        writer = _writers.get(key)
        if writer is None:  # one per process: a forked pool process starts its own
            writer = _writers[key] = BackgroundWriter(self)
        writer.put(job_id, line)

    def read(self, job_id: str, after: int = 0, limit: int = 1000) -> list[dict]:
        """Lines numbered above `after`, oldest first, at most `limit`: read from there, not the
        whole log (app/store/lua/job_log_read.lua). Raises redis-py's errors."""
        raw = self._read(keys=[keys.job_log(job_id)], args=[max(after, 0), limit])
        return [json.loads(line) for line in raw]


# A task waits at most this long at its end to write its lines (longer only if Redis hangs; the
# workers' job-log client times out after this long too).
FLUSH_SECONDS = 5.0
# A line logged while a task runs reaches Redis within this long, however long the task runs.
TICK_SECONDS = 0.2
# Lines a writer could not write (Redis down) are said this often at most.
REPORT_SECONDS = 10.0


class BackgroundWriter:
    """Writes a process's job-log lines in order, as many per round trip as are waiting.

    A worker logs two lines per batch. Written inline they were two Redis round trips on every
    batch's path; handed to a thread one by one, the wake-ups and the hand-over cost about a third
    of a pool process's CPU again (bench/load.py). So a line is only queued when logged: a batch's
    lines go in the round trip that counts its outcome (`run_with`), what a task logs after that is
    written at its end (`for_job` calls `flush`), and a thread writes the lines of a task still
    running every TICK_SECONDS. A line can be lost only with a process killed mid-task.
    """

    def __init__(self, job_log: JobLog):
        self.job_log = job_log
        self.lines: collections.deque[tuple[str, dict]] = collections.deque()
        self.writing = threading.Lock()  # one writer at a time: lines reach Redis in the order logged
        self.unwritten = 0  # lines lost since the last time it was said
        self.said_at = -REPORT_SECONDS
        threading.Thread(target=self._run, name="job-log-writer", daemon=True).start()

    def put(self, job_id: str, line: dict) -> None:
        """Queue a line."""
        self.lines.append((job_id, line))

    def flush(self, timeout: float) -> None:
        """Write every line queued so far (waiting at most `timeout` for the thread to finish its write)."""
        if self.lines and self.writing.acquire(timeout=timeout):
            try:
                self._write_waiting()
            finally:
                self.writing.release()

    def _run(self) -> None:
        while True:
            time.sleep(TICK_SECONDS)
            if self.lines:
                with self.writing:
                    self._write_waiting()

    def run_with(self, client: redis.Redis, call: Call) -> Any:
        """Run `call` in one round trip with the script calls writing every line queued so far,
        before it; its reply, or the error it raised."""
        if not self.writing.acquire(timeout=FLUSH_SECONDS):
            return run_together(client, [call])[0]
        try:
            *written, reply = run_together(client, [*self._writes(self._take()), call])
            errors = [err for err in written if isinstance(err, Exception)]
            if errors:
                self._lost(len(errors), errors[0])
            return reply
        finally:
            self.writing.release()

    def _take(self) -> list[tuple[str, dict]]:
        return [self.lines.popleft() for _ in range(min(len(self.lines), 500))]

    def _writes(self, taken: list[tuple[str, dict]]) -> list[Call]:
        """One append call per run of consecutive lines of the same job (each job's stay in order)."""
        runs = itertools.groupby(taken, lambda t: t[0])
        return [self.job_log.append_call(job_id, [line for _, line in run]) for job_id, run in runs]

    def _write_waiting(self) -> None:
        while self.lines:
            taken = self._take()
            try:
                for error in run_together(self.job_log.redis, self._writes(taken)):
                    if isinstance(error, Exception):
                        raise error
            except Exception as err:  # noqa: BLE001 - a log line must never fail the batch
                self._lost(len(taken), err)
                return  # the next lines at the next tick: Redis is not answering

    def _lost(self, count: int, err: Exception) -> None:
        """Say that lines were lost, at most once every REPORT_SECONDS, to the process's log only.

        Not to sys.stderr: in a worker that is a logger whose lines go to the job log (workers/stdio.py),
        and each failure to write one queued another, at full speed, for as long as Redis was down.
        """
        self.unwritten += count
        if time.monotonic() - self.said_at >= REPORT_SECONDS:
            log.warning(
                "job log: %d lines not written: %s", self.unwritten, redacted(str(err)), extra=NOT_IN_JOB_LOG
            )
            self.unwritten, self.said_at = 0, time.monotonic()


def flush_lines() -> None:
    """Write this process's queued job-log lines now: before a line written another way (the job
    store's at a job's end), so that the log stays in order."""
    for writer in _own_writers():
        writer.flush(FLUSH_SECONDS)


def run_with_lines(client: redis.Redis, call: Call) -> Any:
    """Run a script call, with this process's queued job-log lines written in the same round trip
    (a worker counting a batch's outcome); its reply, or the error it raised."""
    writers = _own_writers()
    return writers[0].run_with(client, call) if writers else run_together(client, [call])[0]


def _own_writers() -> list[BackgroundWriter]:
    """This process's writers (a forked process has no thread behind its parent's)."""
    return [writer for (_, pid), writer in list(_writers.items()) if pid == os.getpid()]


_writers: dict[tuple[int, int], BackgroundWriter] = {}


@functools.cache
def _hostname() -> str:
    return socket.gethostname()  # a system call, and it was made for every line twice


def _line(record: logging.LogRecord, job: tuple[str, str] | None) -> dict:
    line = {
        "time": record.created,
        "level": record.levelname.lower(),
        "logger": record.name,
        "message": redacted(record.getMessage()),  # a URL with a password in an error loses the password
        "process": f"{_hostname()}:{record.process}",
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
        job = job_of(record)
        if job is None or record.name.startswith(LIBRARY_LOGGERS):
            return
        if not getattr(record, "job_log", True):
            return
        try:
            job_log = current_log.get() or self.job_log
            line = _capped(_line(record, job))
            if self.background:
                job_log.write_soon(job[1], line)
            else:
                job_log.write(job[1], line)
        except Exception:  # noqa: BLE001 - a log line must never fail the batch
            self.handleError(record)


# A job's log lives in the shared Redis, up to `JobLog.max_lines` lines: a `print(payload)` of 256 KiB
# batches would put gigabytes there. The process log keeps lines whole.
MAX_MESSAGE_CHARS = 8 * 1024
MAX_TRACEBACK_CHARS = 32 * 1024


def _capped(line: dict) -> dict:
    message = line["message"]
    if len(message) > MAX_MESSAGE_CHARS:
        cut = len(message) - MAX_MESSAGE_CHARS
        line["message"] = f"{message[:MAX_MESSAGE_CHARS]}... ({cut} more characters in the worker's process log)"
    trace = line.get("traceback", "")
    if len(trace) > MAX_TRACEBACK_CHARS:  # its end says what was raised, and where
        cut = len(trace) - MAX_TRACEBACK_CHARS
        line["traceback"] = f"({cut} characters cut) ...{trace[-MAX_TRACEBACK_CHARS:]}"
    return line


class TextFormatter(logging.Formatter):
    """Plain text lines (BATCHERY_LOG_FORMAT=text), URL credentials masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redacted(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with `api_name` and `job_id` while a job's task runs."""

    def format(self, record: logging.LogRecord) -> str:
        line = _line(record, job_of(record))
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


class ProcessLogHandler(logging.StreamHandler):
    """The process's own log lines, as `configure_process_logging` sets them up: replaced, not
    added to, when it runs again."""


def configure_process_logging(
    job_log: JobLog,
    level: str | int = "INFO",
    background: bool = False,
    stream: TextIO | None = None,
    log_format: str = "json",
) -> None:
    """Root logging for a worker or API process: JSON lines on `stream` (default stderr;
    `log_format` "text" for plain text: BATCHERY_LOG_FORMAT), and every record made for a job
    copied into the job's log (`background`: by a writer thread)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, ProcessLogHandler):
            root.removeHandler(handler)
    lines = ProcessLogHandler(stream)
    if log_format == "json":
        lines.setFormatter(JsonFormatter())
    else:
        lines.setFormatter(TextFormatter("[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"))
    root.addHandler(lines)
    attach_job_log(job_log, background=background)
    root.setLevel(level if isinstance(level, int) else level.upper())

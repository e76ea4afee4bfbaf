"""What a worker prints becomes log lines: JSON lines like the rest, and in the job's log while a
job's task runs (`print()` in a predictor is how many report progress; Cortex showed it).

Celery redirects a worker's stdout and stderr to a logger only when it configures logging itself;
Batchery configures it instead (workers/celery_app.py), so prints went to the process's output
raw, outside the job's log and breaking the JSON lines. Celery's `LoggingProxy` is not used: it
logs each `write()` call, and `print(a, b)` writes `a`, the separator, `b` and the end apart (four
records). Here a line is logged when it ends.
"""

from __future__ import annotations

import io
import logging
import sys
import threading


class LoggedLines(io.TextIOBase):
    """A text stream whose complete lines are logged at `level` (each thread's apart)."""

    def __init__(self, logger: logging.Logger, level: int, original):
        self.logger, self.level, self.original = logger, level, original
        self._thread = threading.local()

    def writable(self) -> bool:
        """Always: the stream is for writing."""
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]  # typeshed: an attribute; io: a read-only property
        """The encoding of the lines logged."""
        return "utf-8"

    def fileno(self) -> int:
        """The original stream's descriptor."""
        return self.original.fileno()  # who writes to the descriptor (faulthandler) writes raw

    @property
    def buffer(self):
        """The original stream's bytes: written raw, as to the descriptor."""
        return self.original.buffer

    def reconfigure(self, **options: object) -> None:
        """Accepted and ignored (encoding, line buffering): lines are logged as text."""

    def write(self, text: str) -> int:
        """Buffer `text`, and log each line it completes."""
        state = self._thread
        if getattr(state, "logging", False):  # a handler writing here while one of our lines is logged
            return self.original.write(text)
        *lines, state.rest = (getattr(state, "rest", "") + text).split("\n")
        for line in lines:
            self._log(line)
        return len(text)

    def flush(self) -> None:
        """Log the line begun, if any (a progress bar redraws without a newline, then flushes)."""
        rest, self._thread.rest = getattr(self._thread, "rest", ""), ""
        self._log(rest)

    def _log(self, line: str) -> None:
        line = line.rstrip("\r")
        if not line.strip():
            return
        self._thread.logging = True
        try:
            self.logger.log(self.level, line)
        finally:
            self._thread.logging = False


def redirect() -> None:
    """Log what this process writes to sys.stdout (INFO) and sys.stderr (WARNING), as `stdout` and
    `stderr` lines; once per process (a forked pool process keeps its parent's)."""
    if not isinstance(sys.stdout, LoggedLines):
        sys.stdout = LoggedLines(logging.getLogger("stdout"), logging.INFO, sys.stdout)
    if not isinstance(sys.stderr, LoggedLines):
        sys.stderr = LoggedLines(logging.getLogger("stderr"), logging.WARNING, sys.stderr)


def unwrapped(stream):
    """The stream a LoggedLines writes to, or `stream` itself: where log handlers write."""
    return stream.original if isinstance(stream, LoggedLines) else stream

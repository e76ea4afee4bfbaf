"""Doing something every few seconds while a block runs: the heartbeats of a running task.

A task that runs long keeps saying it is alive (an SQS message's visibility, a finalizer's claim)
so that nothing takes it for lost; a worker that dies stops beating, and what it held is taken
over once its last beat is old enough.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


@contextmanager
def heartbeat(beat: Callable[[], object], every: float, name: str) -> Iterator[None]:
    """Call `beat` every `every` seconds in a daemon thread until the block ends. A beat that
    raises is logged, and the next one tries again."""
    done = threading.Event()
    thread = threading.Thread(target=_beat, args=(beat, every, done, name), name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


def beat_forever(beat: Callable[[], object], every: float, name: str) -> threading.Thread:
    """Call `beat` every `every` seconds from a daemon thread, for as long as the process lives."""
    thread = threading.Thread(target=_beat, args=(beat, every, threading.Event(), name), name=name, daemon=True)
    thread.start()
    return thread


def _beat(beat: Callable[[], object], every: float, done: threading.Event, name: str) -> None:
    while not done.wait(every):
        try:
            beat()
        except Exception as err:  # noqa: BLE001 - a missed beat is retried; the task goes on
            log.warning("%s: a heartbeat failed: %s", name, err)

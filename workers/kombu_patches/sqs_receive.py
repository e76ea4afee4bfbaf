"""A guard on kombu's SQS transport: a receive that SQS did not answer.

When SQS (or the network to it) fails a long poll with a timeout or a 5xx, kombu 5.7's
asynchronous client hands the receive's callback an empty list instead of a response, and the
callback reads it as one (`messages.get('Messages')`): the AttributeError stops the whole worker
("Unrecoverable error"), and its jobs wait for a worker that is gone. A reply that is not a
response is taken for "no messages", and the next poll waits a second (the hub would otherwise
poll a refusing endpoint in a tight loop); a warning says so once a minute for each queue.

A receive can also never come back: seen when the connection of a long poll in flight was cut
(a worker polls each of its queues and their control queues, so several are in flight at once),
that queue's polling stopped for good while the others went on, and its jobs waited. Each poll is
now timed: a queue whose poll has had no reply for `STALLED_SECONDS` (well past the long poll and
kombu's request timeout) is polled again, and the reply of the poll it replaces, if it ever comes,
is dropped (a token per poll), so one chain of polls runs per queue.

Upstream: celery/kombu#1064 (with celery/celery#5072) kept the synchronous receive going on a
500 or 503 from SQS; the asynchronous path is not covered by it, and no issue was found for it
(`kombu/asynchronous/aws/sqs/connection.py`, `AsyncSQSConnection.receive_message`, whose
callback is `kombu/transport/SQS/__init__.py`, `Channel._on_messages_ready`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kombu.transport import SQS
from vine import promise

from workers.kombu_patches import install_once

log = logging.getLogger(__name__)

UPSTREAM = "the asynchronous receive of celery/kombu#1064 (no issue of its own found)"

RETRY_SECONDS = 1.0
# a poll with no reply this long is taken for lost: kombu's request timeout is 20 s, a long poll 1 s
STALLED_SECONDS = 30.0
CHECK_SECONDS = 5.0
WARN_EVERY_SECONDS = 60.0
_warned_at: dict[str, float] = {}  # queue -> when its last warning was logged


def install(version: str | None = None) -> None:
    """Wrap kombu's SQS Channel._on_messages_ready once (idempotent); raises UnsupportedKombu on
    a kombu version this was not written for."""
    install_once(SQS.Channel, "_on_messages_ready", _guarded, __name__, UPSTREAM, version)
    install_once(SQS.Channel, "_schedule_queue", _timed, __name__, UPSTREAM, version)


def _guarded(original: Callable[..., Any]) -> Callable[..., Any]:
    def _on_messages_ready(self: Any, queue: Any, qname: str, messages: Any) -> Any:
        if isinstance(messages, dict):
            return original(self, queue, qname, messages)
        _unanswered(qname)
        return 0

    return _on_messages_ready


def _unanswered(qname: str) -> None:
    # once a minute per queue: a worker polls several (its queues and their control queues)
    if time.monotonic() - _warned_at.get(qname, float("-inf")) >= WARN_EVERY_SECONDS:
        _warned_at[qname] = time.monotonic()
        log.warning("SQS did not answer a receive on %s (a timeout or a server error): polling again", qname)
    time.sleep(RETRY_SECONDS)  # the event loop's thread: a pause between failed polls, not a busy loop


def _timed(original: Callable[..., Any]) -> Callable[..., Any]:
    """kombu's `_schedule_queue`, each poll with a token and its start time, watched for a reply."""

    def _schedule_queue(self: Any, queue: str) -> None:
        if queue not in self._active_queues:
            return
        if not self.qos.can_consume():
            self._loop1(queue)  # as kombu does: look again later
            return
        _watch(self)
        token = object()
        self._batchery_polls[queue] = (token, time.monotonic())
        self._get_bulk_async(queue, callback=promise(_replied, (self, queue, token)))

    return _schedule_queue


def _replied(channel: Any, queue: str, token: object, messages_fetched: Any = None) -> None:
    """A poll's reply: go on polling the queue, unless this poll was replaced as lost."""
    current = channel._batchery_polls.get(queue)
    if current is None or current[0] is not token:
        return  # a poll taken for lost came back after all: its replacement polls the queue
    del channel._batchery_polls[queue]
    channel._loop1(queue, messages_fetched)


def _watch(channel: Any) -> None:
    """Start, once per channel, the timer that polls again a queue whose poll went unanswered."""
    if getattr(channel, "_batchery_polls", None) is not None:
        return
    channel._batchery_polls = {}
    channel.hub.call_repeatedly(CHECK_SECONDS, _poll_stalled, channel)


def _poll_stalled(channel: Any) -> None:
    for queue, (_, started) in list(channel._batchery_polls.items()):
        if time.monotonic() - started >= STALLED_SECONDS:
            log.warning("SQS never answered a receive on %s for %.0f s: polling it again", queue, STALLED_SECONDS)
            channel._schedule_queue(queue)

"""A guard on kombu's SQS transport: a receive that SQS did not answer.

When SQS (or the network to it) fails a long poll with a timeout or a 5xx, kombu 5.7's
asynchronous client hands the receive's callback an empty list instead of a response, and the
callback reads it as one (`messages.get('Messages')`): the AttributeError stops the whole worker
("Unrecoverable error"), and its jobs wait for a worker that is gone. A reply that is not a
response is taken for "no messages", and the next poll waits a second (the hub would otherwise
poll a refusing endpoint in a tight loop); a warning says so once a minute.

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

from workers.kombu_patches import install_once

log = logging.getLogger(__name__)

UPSTREAM = "the asynchronous receive of celery/kombu#1064 (no issue of its own found)"

RETRY_SECONDS = 1.0
WARN_EVERY_SECONDS = 60.0
_warned_at = 0.0


def install(version: str | None = None) -> None:
    """Wrap kombu's SQS Channel._on_messages_ready once (idempotent); raises UnsupportedKombu on
    a kombu version this was not written for."""
    install_once(SQS.Channel, "_on_messages_ready", _guarded, __name__, UPSTREAM, version)


def _guarded(original: Callable[..., Any]) -> Callable[..., Any]:
    def _on_messages_ready(self: Any, queue: Any, qname: str, messages: Any) -> Any:
        if isinstance(messages, dict):
            return original(self, queue, qname, messages)
        _unanswered(qname)
        return 0

    return _on_messages_ready


def _unanswered(qname: str) -> None:
    global _warned_at
    if time.monotonic() - _warned_at >= WARN_EVERY_SECONDS:
        _warned_at = time.monotonic()
        log.warning("SQS did not answer a receive on %s (a timeout or a server error): polling again", qname)
    time.sleep(RETRY_SECONDS)  # the event loop's thread: a pause between failed polls, not a busy loop

"""A guard on kombu's SQS transport: a receive that SQS did not answer.

When SQS (or the network to it) fails a long poll with a timeout or a 5xx, kombu 5.7's
asynchronous client hands the receive's callback an empty list instead of a response, and the
callback reads it as one (`messages.get('Messages')`): the AttributeError stops the whole worker
("Unrecoverable error"), and its jobs wait for a worker that is gone. A reply that is not a
response is taken for "no messages", and the next poll waits a second (the hub would otherwise
poll a refusing endpoint in a tight loop); a warning says so once a minute.
"""

from __future__ import annotations

import logging
import time

from kombu.transport import SQS

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
WARN_EVERY_SECONDS = 60.0
_warned_at = 0.0


def install() -> None:
    """Wrap kombu's SQS Channel._on_messages_ready once (idempotent)."""
    original = SQS.Channel._on_messages_ready
    if getattr(original, "batchery_guard", False):
        return

    def _on_messages_ready(self, queue, qname, messages):
        if isinstance(messages, dict):
            return original(self, queue, qname, messages)
        _unanswered(qname)
        return 0

    _on_messages_ready.batchery_guard = True
    SQS.Channel._on_messages_ready = _on_messages_ready


def _unanswered(qname: str) -> None:
    global _warned_at
    if time.monotonic() - _warned_at >= WARN_EVERY_SECONDS:
        _warned_at = time.monotonic()
        log.warning("SQS did not answer a receive on %s (a timeout or a server error): polling again", qname)
    time.sleep(RETRY_SECONDS)  # the event loop's thread: a pause between failed polls, not a busy loop

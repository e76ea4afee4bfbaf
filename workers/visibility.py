"""Keeping an SQS message invisible while its task runs, as Cortex's workers did.

SQS hands a message to another consumer once its visibility timeout runs out, so a batch longer
than the timeout would run twice. While a task runs, a thread pushes the timeout back every third
of it. A worker that dies stops pushing, and its message comes back within one timeout. On the
Redis broker messages carry no SQS receipt, and this does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache, partial
from typing import Any

import botocore.exceptions

from app.broker.sqs import sqs_client
from workers.heartbeat import heartbeat

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _sqs() -> Any:
    return sqs_client()


def sqs_receipt(request: Any) -> tuple[str, str] | None:
    """(queue URL, receipt handle) of the message a task request came from, if it came from SQS."""
    properties = getattr(request, "properties", None) or {}
    queue = (properties.get("delivery_info") or {}).get("sqs_queue")
    receipt = properties.get("delivery_tag")
    return (queue, receipt) if queue and receipt else None


@contextmanager
def kept_invisible(request: Any, timeout: int) -> Iterator[None]:
    """Extend the message's visibility every `timeout / 3` seconds until the block ends."""
    found = sqs_receipt(request)
    if found is None:
        yield
        return
    with heartbeat(partial(_extend, *found, timeout), timeout / 3, "sqs-visibility"):
        yield


def _extend(queue: str, receipt: str, timeout: int) -> None:
    try:
        _sqs().change_message_visibility(QueueUrl=queue, ReceiptHandle=receipt, VisibilityTimeout=timeout)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
        log.warning("could not extend the visibility of an SQS message: %s", err)

"""A guard on kombu's SQS transport: putting back a message that SQS already delivered again.

When a pool process dies, Celery rejects its message with requeue, and kombu's SQS channel makes
it visible again with ChangeMessageVisibility on the message's receipt handle. If the message
had already come back (its visibility timeout ran out while it waited, so another receive gave
it a new receipt handle), SQS refuses the old handle, and kombu 5.7 lets that error stop the
whole worker ("Unrecoverable error: ReceiptHandleIsInvalid"). The message is back in the queue
either way, so the refusal is logged and the worker goes on. Batchery counts deliveries itself,
so the extra delivery is counted once.

Upstream: celery/kombu#1391 (open: ChangeMessageVisibility on an expired receipt handle crashes
the worker) and celery/kombu#1198 (the same on DeleteMessage). The code path is
`kombu/transport/SQS/__init__.py`, `Channel._restore`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import botocore.exceptions
from kombu.transport import SQS

from workers.kombu_patches import install_once

log = logging.getLogger(__name__)

UPSTREAM = "celery/kombu#1391"

ALREADY_BACK = {"ReceiptHandleIsInvalid", "InvalidParameterValue", "MessageNotInflight"}


def install(version: str | None = None) -> None:
    """Wrap kombu's SQS Channel._restore once (idempotent); raises UnsupportedKombu on a kombu
    version this was not written for."""
    install_once(SQS.Channel, "_restore", _guarded, __name__, UPSTREAM, version)


def _guarded(original: Callable[..., Any]) -> Callable[..., Any]:
    def _restore(self: Any, message: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, message, *args, **kwargs)
        except botocore.exceptions.ClientError as err:
            if err.response.get("Error", {}).get("Code") not in ALREADY_BACK:
                raise
            log.warning("an SQS message to put back was already delivered again: %s", err)
            return None

    return _restore

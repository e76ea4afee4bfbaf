"""A guard on kombu's SQS transport: putting back a message that SQS already delivered again.

When a pool process dies, Celery rejects its message with requeue, and kombu's SQS channel makes
it visible again with ChangeMessageVisibility on the message's receipt handle. If the message
had already come back (its visibility timeout ran out while it waited, so another receive gave
it a new receipt handle), SQS refuses the old handle, and kombu 5.7 lets that error stop the
whole worker ("Unrecoverable error: ReceiptHandleIsInvalid"). The message is back in the queue
either way, so the refusal is logged and the worker goes on. Batchery counts deliveries itself,
so the extra delivery is counted once.
"""

from __future__ import annotations

import logging

import botocore.exceptions
from kombu.transport import SQS

log = logging.getLogger(__name__)

ALREADY_BACK = {"ReceiptHandleIsInvalid", "InvalidParameterValue", "MessageNotInflight"}


def install() -> None:
    """Wrap kombu's SQS Channel._restore once (idempotent)."""
    original = SQS.Channel._restore
    if getattr(original, "batchery_guard", False):
        return

    def _restore(self, message, *args, **kwargs):
        try:
            return original(self, message, *args, **kwargs)
        except botocore.exceptions.ClientError as err:
            if err.response.get("Error", {}).get("Code") not in ALREADY_BACK:
                raise
            log.warning("an SQS message to put back was already delivered again: %s", err)
            return None

    _restore.batchery_guard = True
    SQS.Channel._restore = _restore
